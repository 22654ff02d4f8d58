//! Keeps the per-process caches in step with changes made elsewhere: key revocations (Redis announcements and the
//! revocation epoch, `KeyCache::follow`) and billing changes (PostgreSQL's `NOTIFY` on
//! `store::billing::CHANGES_CHANNEL`). Both caches also expire by themselves, so a lost announcement costs at most
//! their time-to-live.

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
    tokio::join!(keys, billing);
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
