//! Keeps the per-process caches in step with changes made elsewhere: key revocations (Redis announcements and the
//! revocation epoch, `KeyCache::follow`) and billing changes (PostgreSQL's `NOTIFY` on
//! `store::billing::CHANGES_CHANNEL`). Both caches also expire by themselves, so a lost announcement costs at most
//! their time-to-live. It also announces the revocations still owed (`services::keys::announce_owed`), so every
//! replica's cache hears of a revocation whose announce failed even if nobody repeats the call.

use crate::app::App;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_common::store::billing::CHANGES_CHANNEL;

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
    let billing = async {
        tokio::select! {
            () = follow_billing(&app) => {}
            () = stopped(shutdown.clone()) => {}
        }
    };
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

/// Drops an org's cached billing state when PostgreSQL announces a change; every org after a reconnect.
async fn follow_billing(app: &App) {
    let mut connected_before = false;
    loop {
        let listened = async {
            let mut listener = PgListener::connect_with(&app.pg).await?;
            listener.listen(CHANGES_CHANNEL).await?;
            if std::mem::replace(&mut connected_before, true) {
                app.accounts.invalidate_all();
            }
            loop {
                match listener.try_recv().await? {
                    Some(notification) => match notification.payload().parse::<i64>() {
                        Ok(org_id) => app.accounts.invalidate(org_id),
                        Err(_) => app.accounts.invalidate_all(),
                    },
                    // The connection dropped (sqlx reconnects on the next call): notifications may be lost.
                    None => app.accounts.invalidate_all(),
                }
            }
        }
        .await;
        let result: Result<(), sqlx::Error> = listened;
        if let Err(e) = result {
            tracing::debug!(error = %e, "billing change listener disconnected; reconnecting");
        }
        app.accounts.invalidate_all();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
