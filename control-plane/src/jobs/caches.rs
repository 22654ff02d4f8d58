//! Keeps the per-process caches in step with changes made elsewhere: key revocations (Redis announcements and the
//! revocation epoch, `KeyCache::follow`) and billing changes (PostgreSQL's `NOTIFY` on
//! `store::billing::CHANGES_CHANNEL`, `BillingCache::follow`: the org named is reloaded, everything after a reconnect,
//! and a slow safety net re-reads every cached org once per `TOLLGATE_BILLING_RECHECK_MS`). It also announces the revocations still owed (`services::keys::announce_owed`), so every
//! replica's cache hears of a revocation whose announce failed even if nobody repeats the call.

use crate::app::App;
use std::sync::Arc;
use tokio::sync::watch;

/// Runs until `shutdown` turns true.
pub async fn run(app: Arc<App>, shutdown: watch::Receiver<bool>) {
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let keys = app.keys.follow(
        &app.config.common.redis,
        app.config.refresh_interval,
        stopped(shutdown.clone()),
    );
    let billing = app.accounts.follow(
        &app.pg,
        app.config.common.caches.billing_recheck,
        stopped(shutdown.clone()),
    );
    let owed = async {
        tokio::select! {
            () = announce_owed(&app) => {}
            () = stopped(shutdown.clone()) => {}
        }
    };
    tokio::join!(keys, billing, owed);
}

/// Every refresh interval, announces the revocations whose announcement is owed (one indexed query when none is).
async fn announce_owed(app: &App) {
    let mut ticker = tokio::time::interval(app.config.refresh_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        match app.key_service.announce_owed().await {
            Ok(_) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("owed key revocations announced again");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "cannot announce owed key revocations; retrying every interval");
                }
            }
        }
    }
}
