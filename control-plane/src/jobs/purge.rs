//! The retention purge (see `services::retention`): every `TOLLGATE_RETENTION_PURGE_INTERVAL_MS`, on every
//! replica, one pass over the purged tables in bounded batches. Replicas need no coordination: each batch skips
//! rows another replica holds, and deleting twice is a no-op.

use crate::services::retention::Purger;
use std::sync::Arc;
use tokio::sync::watch;

/// Runs passes until `shutdown` turns true; the first one an interval after start, so replicas started together
/// and tests that insert old rows after start are not raced by it.
pub async fn run(purger: Arc<Purger>, mut shutdown: watch::Receiver<bool>) {
    let interval = purger.settings().purge_interval;
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        match purger.pass(&mut shutdown).await {
            Ok(_) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("retention purge recovered");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "retention purge failed; retrying at the next interval");
                }
            }
        }
    }
}
