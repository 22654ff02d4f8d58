//! The Stigg outbox drain: delivers queued operations, in order per org, on every replica (see
//! `services::stigg`). Queueing wakes a local task at once; idle tasks poll every [`POLL`].

use crate::services::stigg::{Delivery, Stigg};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often an idle task looks for due operations.
pub const POLL: Duration = Duration::from_millis(250);
/// Delivery tasks per replica.
pub const TASKS: usize = 2;

/// Runs the drain until `shutdown` turns true; a delivery under way is finished first.
pub async fn run(stigg: Arc<Stigg>, shutdown: watch::Receiver<bool>) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|n| tokio::spawn(work(Arc::clone(&stigg), n, shutdown.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

async fn work(stigg: Arc<Stigg>, n: usize, mut shutdown: watch::Receiver<bool>) {
    let mut failing = false;
    let mut gauges_at: Option<tokio::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if n == 0 && gauges_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            gauges_at = Some(tokio::time::Instant::now());
            if let Err(e) = stigg.refresh_metrics().await {
                tracing::debug!(error = %e, "could not read the stigg outbox depth");
            }
        }
        let next = stigg.deliver_next().await;
        if next.is_ok() && std::mem::take(&mut failing) {
            tracing::info!("stigg outbox drain recovered");
        }
        match next {
            Ok(Some(Delivery::Delivered | Delivery::Failed(_))) => continue,
            Ok(None) => {}
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "stigg outbox drain cannot reach the database; retrying");
                }
            }
        }
        tokio::select! {
            () = stigg.wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}
