//! The webhook worker: processes received Stripe events without anyone calling 2.4 (CONTRACT §8).
//!
//! `TOLLGATE_STRIPE_WORKERS` tasks per replica each claim one due event at a time with a lease (one short statement,
//! `FOR UPDATE SKIP LOCKED`, so replicas and tasks never take the same event) and process it with the same code as
//! `/api/jobs/stripe.process`: no connection is held while Stripe is read, so a backlog during a Stripe outage
//! costs the pool nothing but the short claim and record statements.
//! Intake wakes a local task at once; the others poll every [`POLL`], so an event received by another replica is
//! picked up within that. Failures are recorded on the event and retried with backoff (2 s doubling to 5 min).

use crate::services::billing::Billing;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often an idle task looks for due events.
pub const POLL: Duration = Duration::from_millis(250);

/// Runs `workers` tasks until `shutdown` turns true; an event being processed is finished first.
pub async fn run(billing: Arc<Billing>, workers: usize, shutdown: watch::Receiver<bool>) {
    let tasks: Vec<_> = (0..workers)
        .map(|n| tokio::spawn(work(Arc::clone(&billing), n, shutdown.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

async fn work(billing: Arc<Billing>, n: usize, mut shutdown: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if n == 0
            && let Err(e) = billing.refresh_queue_metrics().await
        {
            tracing::debug!(error = %e, "could not read the webhook queue depth");
        }
        let next = billing.process_next().await;
        if next.is_ok() && std::mem::take(&mut failing) {
            tracing::info!("webhook worker recovered");
        }
        match next {
            Ok(Some((event_id, Ok(processed)))) => {
                tracing::debug!(stripe.event_id = %event_id, ?processed, "stripe event processed");
                continue;
            }
            // Recorded on the event (attempts, last error, next attempt) and logged by the service.
            Ok(Some((_, Err(_)))) => continue,
            Ok(None) => {}
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "webhook worker cannot reach the database; retrying");
                }
            }
        }
        tokio::select! {
            () = billing.wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}
