//! Stripe webhook events: 2.3 intake, 2.4 processing (by the worker or on demand), 8.1 replay.
//!
//! # Exactly once
//!
//! * **Intake** verifies the signature on the raw body, then inserts the event by its id (`ON CONFLICT DO NOTHING`):
//!   a repeated delivery stores nothing new and gets the same answer.
//! * **Processing** claims an event row with `FOR UPDATE` (`SKIP LOCKED` for the worker, so replicas take different
//!   events), reads the object the event concerns back from Stripe — never trusting the event's copy or its order —
//!   and mirrors it, all in one transaction; the row is marked applied in the same transaction. A failure rolls the
//!   mirroring back to a savepoint and records the attempt, the error and the next attempt's time instead.
//! * **Applying twice changes nothing**: the mirror writes Stripe's current state, and the same state is no change.
//!   So replays (8.1), duplicates and out-of-order events all converge on what Stripe says now.

use super::{Billing, BillingError, subscriptions::Synced};
use crate::services::batch::Write;
use crate::stripe::Op;
use crate::stripe::signature;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{Acquire, PgConnection, PgPool};
use std::collections::HashSet;
use stripe_billing::invoice::RetrieveInvoice;
use stripe_billing::subscription_schedule::RetrieveSubscriptionSchedule;
use stripe_core::customer::{RetrieveCustomer, RetrieveCustomerReturned};

/// What intake did with a delivery.
#[derive(Debug, Clone)]
pub struct Received {
    /// The event's id.
    pub event_id: String,
    /// Whether it had been received before (nothing was stored).
    pub duplicate: bool,
}

/// What processing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// The database now mirrors Stripe for the event's object.
    Applied,
    /// An event type Tollgate does not act on (stored and acknowledged).
    Ignored,
}

impl Processed {
    /// The event's stored status, and its `tollgate_cp_webhook_events_total` outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
        }
    }
}

/// The parts of an event intake and processing need.
#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    object: ObjectRef,
}

#[derive(Deserialize)]
struct ObjectRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    object: Option<String>,
}

/// A stored event, as processing reads it.
#[derive(sqlx::FromRow)]
struct StoredEvent {
    event_id: String,
    event_type: String,
    object_id: String,
    attempts: i32,
    /// When it was claimed (PostgreSQL's clock): before its object is read back from Stripe.
    claimed_at: DateTime<Utc>,
}

/// How an event type is processed: which object is read back from Stripe, and what is mirrored from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handling {
    Subscription,
    Schedule,
    Invoice,
    Customer,
    /// Stored and acknowledged, nothing to do.
    None,
}

impl Handling {
    fn of(kind: &str) -> Self {
        if kind.starts_with("customer.subscription.") {
            return Self::Subscription;
        }
        if kind.starts_with("subscription_schedule.") {
            return Self::Schedule;
        }
        match kind {
            "invoice.paid"
            | "invoice.payment_failed"
            | "invoice.payment_succeeded"
            | "invoice.finalized"
            | "invoice.created"
            | "invoice.updated"
            | "invoice.marked_uncollectible" => Self::Invoice,
            "customer.updated" | "customer.created" => Self::Customer,
            _ => Self::None,
        }
    }
}

/// Most waiting events one processed event settles with it.
const MAX_COALESCED: i64 = 10_000;

/// Whether `id` is an event id the `stripe_events` table accepts.
pub fn is_event_id(id: &str) -> bool {
    id.strip_prefix("evt_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 250
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Retry delay after `attempts` failed attempts: 2 s doubling to at most 5 min.
fn retry_delay_secs(attempts: i32) -> i64 {
    2_i64
        .saturating_pow(u32::try_from(attempts.clamp(1, 9)).unwrap_or(9))
        .min(300)
}

/// A verified delivery, as intake stores it.
pub(super) struct Incoming {
    event_id: String,
    kind: String,
    /// The body exactly as Stripe signed it (stored as `jsonb`).
    payload: String,
    created: DateTime<Utc>,
    object_type: String,
    object_id: String,
}

/// Intake's group commit: the deliveries that arrive together are inserted by one statement in one transaction.
/// Each reply says whether that delivery stored the event (`false`: it was stored before, or by an earlier
/// delivery of the same batch). A batch that fails is retried one delivery at a time, so one bad event fails
/// only its own delivery.
pub(super) struct Intake {
    pub(super) pg: PgPool,
}

/// Most deliveries one intake batch takes, and the intake writers per process.
pub(super) const INTAKE_BATCH: usize = 128;
pub(super) const INTAKE_WRITERS: usize = 2;

const INSERT_EVENTS: &str = "INSERT INTO stripe_events (event_id, event_type, payload, stripe_created, object_type, object_id)
     SELECT e, t, p::jsonb, c, ot, oi
       FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[])
         AS u(e, t, p, c, ot, oi)
     ON CONFLICT (event_id) DO NOTHING RETURNING event_id";

impl Intake {
    /// Inserts `events` (distinct ids); returns the ids this statement stored.
    async fn insert(&self, events: &[&Incoming]) -> Result<HashSet<String>, sqlx::Error> {
        let column = |f: fn(&Incoming) -> &str| events.iter().map(|e| f(e)).collect::<Vec<_>>();
        let stored: Vec<String> = sqlx::query_scalar(INSERT_EVENTS)
            .bind(column(|e| &e.event_id))
            .bind(column(|e| &e.kind))
            .bind(column(|e| &e.payload))
            .bind(events.iter().map(|e| e.created).collect::<Vec<_>>())
            .bind(column(|e| &e.object_type))
            .bind(column(|e| &e.object_id))
            .fetch_all(&self.pg)
            .await?;
        Ok(stored.into_iter().collect())
    }
}

impl Write for Intake {
    type Item = Incoming;
    type Reply = Result<bool, sqlx::Error>;

    async fn write(&self, batch: Vec<Incoming>) -> Vec<Self::Reply> {
        let mut first: HashSet<&str> = HashSet::with_capacity(batch.len());
        let distinct: Vec<&Incoming> = batch
            .iter()
            .filter(|e| first.insert(e.event_id.as_str()))
            .collect();
        match self.insert(&distinct).await {
            Ok(mut stored) => batch
                .iter()
                .map(|e| Ok(stored.remove(&e.event_id)))
                .collect(),
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, deliveries = batch.len(), "an intake batch failed; storing its events one by one");
                let mut replies = Vec::with_capacity(batch.len());
                for event in &batch {
                    replies.push(
                        self.insert(&[event])
                            .await
                            .map(|mut s| s.remove(&event.event_id)),
                    );
                }
                replies
            }
            Err(e) => vec![Err(e)],
        }
    }
}

impl Billing {
    /// 2.3: verifies and stores one delivery.
    pub async fn receive_event(
        &self,
        signature_header: Option<&str>,
        body: &[u8],
    ) -> Result<Received, BillingError> {
        if self.settings.webhook_secrets.is_empty() {
            return Err(BillingError::NotConfigured("STRIPE_WEBHOOK_SECRET"));
        }
        if let Err(e) = signature::verify(
            signature_header,
            body,
            &self.settings.webhook_secrets,
            self.now().timestamp(),
        ) {
            self.metrics.events.with_label_values(&["rejected"]).inc();
            return Err(BillingError::BadWebhook {
                field: "Stripe-Signature",
                detail: e
                    .to_string()
                    .trim_start_matches("Stripe-Signature: ")
                    .to_owned(),
            });
        }
        let bad = |detail: &str| BillingError::BadWebhook {
            field: "body",
            detail: detail.to_owned(),
        };
        let payload = std::str::from_utf8(body).map_err(|_| bad("not a JSON event"))?;
        let event: Envelope = serde_json::from_str(payload).map_err(|e| {
            bad(if e.is_data() {
                "not a Stripe event (id, type, created, data.object)"
            } else {
                "not a JSON event"
            })
        })?;
        if payload.contains("\\u0000") {
            // PostgreSQL's jsonb cannot hold NUL; Stripe never sends it.
            return Err(bad("contains \\u0000, which cannot be stored"));
        }
        if !is_event_id(&event.id) {
            return Err(bad("id: not a Stripe event id (evt_…)"));
        }
        if event.kind.is_empty() || event.kind.len() > 100 {
            return Err(bad("type: must be 1 to 100 characters"));
        }
        let created = DateTime::<Utc>::from_timestamp(event.created, 0)
            .ok_or_else(|| bad("created: not a timestamp"))?;
        let object_id = event.data.object.id.unwrap_or_default();
        let object_type = event.data.object.object.unwrap_or_default();
        if object_id.len() > 255 || object_type.len() > 100 {
            return Err(bad("data.object: id or object too long"));
        }
        let stored = self
            .intake
            .submit(Incoming {
                event_id: event.id.clone(),
                kind: event.kind,
                payload: payload.to_owned(),
                created,
                object_type,
                object_id,
            })
            .await
            .map_err(|_| BillingError::Database(sqlx::Error::PoolClosed))??;
        let duplicate = !stored;
        self.metrics
            .events
            .with_label_values(&[if duplicate { "duplicate" } else { "received" }])
            .inc();
        if !duplicate {
            self.wake.notify_one();
        }
        Ok(Received {
            event_id: event.id,
            duplicate,
        })
    }

    /// 2.4: processes one stored event now, whatever its status (processing is idempotent). Waits for a worker
    /// that holds it. Unknown id: 404 naming `eventId`.
    pub async fn process_event(&self, event_id: &str) -> Result<Processed, BillingError> {
        let mut tx = self.pg.begin().await?;
        let event: Option<StoredEvent> = sqlx::query_as(
            "SELECT event_id, event_type, object_id, attempts, clock_timestamp() AS claimed_at
               FROM stripe_events WHERE event_id = $1 FOR UPDATE",
        )
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await?;
        let event = event.ok_or_else(|| BillingError::NotFound {
            field: "eventId",
            detail: "no such event has been received".to_owned(),
        })?;
        let outcome = self.process_claimed(&mut tx, &event).await;
        tx.commit().await?;
        outcome
    }

    /// The worker's step: claims the next due event no other replica holds and processes it. `Ok(None)` when none
    /// is due. A processing failure is recorded on the event (and is `Ok`): the caller moves on.
    pub async fn process_next(
        &self,
    ) -> Result<Option<(String, Result<Processed, String>)>, BillingError> {
        let mut tx = self.pg.begin().await?;
        let event: Option<StoredEvent> = sqlx::query_as(
            "SELECT event_id, event_type, object_id, attempts, clock_timestamp() AS claimed_at FROM stripe_events
              WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
              ORDER BY next_attempt_at, stripe_created
              LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(event) = event else {
            return Ok(None);
        };
        let outcome = self.process_claimed(&mut tx, &event).await;
        tx.commit().await?;
        Ok(Some((event.event_id, outcome.map_err(|e| e.to_string()))))
    }

    /// Processes an event whose row `tx` holds, recording the outcome on it.
    async fn process_claimed(
        &self,
        tx: &mut PgConnection,
        event: &StoredEvent,
    ) -> Result<Processed, BillingError> {
        let mut savepoint = tx.begin().await?;
        match self.apply_event(&mut savepoint, event).await {
            Ok(processed) => {
                savepoint.commit().await?;
                let outcome = processed.as_str();
                let settled = self.settle_with(tx, event, outcome).await?;
                self.metrics
                    .events
                    .with_label_values(&[outcome])
                    .inc_by(settled);
                Ok(processed)
            }
            Err(e) => {
                savepoint.rollback().await?;
                let attempts = event.attempts + 1;
                sqlx::query(
                    "UPDATE stripe_events SET status = 'failed', attempts = $2, last_error = $3,
                            next_attempt_at = now() + make_interval(secs => $4), processed_at = NULL
                      WHERE event_id = $1",
                )
                .bind(&event.event_id)
                .bind(attempts)
                .bind(truncate(&e.to_string(), 1000))
                .bind(retry_delay_secs(attempts) as f64)
                .execute(&mut *tx)
                .await?;
                self.metrics.events.with_label_values(&["failed"]).inc();
                tracing::warn!(
                    stripe.event_id = %event.event_id,
                    stripe.event_type = %event.event_type,
                    attempts,
                    error = %e,
                    "stripe event failed; retrying with backoff"
                );
                Err(e)
            }
        }
    }

    /// Marks `event` processed with `outcome`, and with it every other waiting event about the same object that is
    /// processed the same way and arrived before `event` was claimed: Stripe had sent them before the object was
    /// read back, so what was just mirrored already includes them (a backlog of one subscription's updates costs
    /// one Stripe read, not one per event). Events another worker holds are left to it. Returns how many events
    /// were marked, `event` included.
    async fn settle_with(
        &self,
        tx: &mut PgConnection,
        event: &StoredEvent,
        outcome: &str,
    ) -> Result<u64, BillingError> {
        let handling = Handling::of(&event.event_type);
        let mut ids = vec![event.event_id.clone()];
        if handling != Handling::None && !event.object_id.is_empty() {
            let waiting: Vec<(String, String)> = sqlx::query_as(
                "SELECT event_id, event_type FROM stripe_events
                  WHERE object_id = $1 AND status IN ('pending', 'failed') AND received_at < $2 AND event_id <> $3
                  LIMIT $4 FOR UPDATE SKIP LOCKED",
            )
            .bind(&event.object_id)
            .bind(event.claimed_at)
            .bind(&event.event_id)
            .bind(MAX_COALESCED)
            .fetch_all(&mut *tx)
            .await?;
            ids.extend(
                waiting
                    .into_iter()
                    .filter(|(_, kind)| Handling::of(kind) == handling)
                    .map(|(id, _)| id),
            );
        }
        let marked = sqlx::query(
            "UPDATE stripe_events SET status = $2, attempts = attempts + 1, last_error = NULL, processed_at = now()
              WHERE event_id = ANY($1)",
        )
        .bind(&ids)
        .bind(outcome)
        .execute(&mut *tx)
        .await?;
        Ok(marked.rows_affected())
    }

    /// Reads the event's object back from Stripe and mirrors it.
    async fn apply_event(
        &self,
        conn: &mut PgConnection,
        event: &StoredEvent,
    ) -> Result<Processed, BillingError> {
        let id = event.object_id.as_str();
        match Handling::of(&event.event_type) {
            Handling::Subscription => self.sync_or_gone(conn, id).await,
            Handling::Schedule => {
                let schedule = self
                    .stripe
                    .send(
                        Op::ScheduleRetrieve,
                        &RetrieveSubscriptionSchedule::new(id),
                        None,
                    )
                    .await?;
                let subscription = schedule
                    .subscription
                    .as_ref()
                    .map(|s| s.id().as_str().to_owned())
                    .or(schedule.released_subscription);
                match subscription {
                    Some(sub) => self.sync_or_gone(conn, &sub).await,
                    None => Ok(Processed::Ignored),
                }
            }
            Handling::Invoice => {
                let invoice = self
                    .stripe
                    .send(Op::InvoiceRetrieve, &RetrieveInvoice::new(id), None)
                    .await?;
                let subscription = invoice
                    .parent
                    .as_ref()
                    .and_then(|p| p.subscription_details.as_ref())
                    .map(|d| d.subscription.id().as_str().to_owned());
                match subscription {
                    Some(sub) => self.sync_or_gone(conn, &sub).await,
                    None => Ok(Processed::Ignored),
                }
            }
            Handling::Customer => {
                let customer = match self
                    .stripe
                    .send(Op::CustomerRetrieve, &RetrieveCustomer::new(id), None)
                    .await?
                {
                    RetrieveCustomerReturned::Customer(customer) => customer,
                    RetrieveCustomerReturned::DeletedCustomer(_) => return Ok(Processed::Ignored),
                };
                let default = customer
                    .invoice_settings
                    .as_ref()
                    .and_then(|s| s.default_payment_method.as_ref())
                    .map(|pm| pm.id().as_str().to_owned());
                sqlx::query(
                    "UPDATE orgs SET stripe_default_payment_method = $2, updated_at = now()
                      WHERE stripe_customer_id = $1 AND stripe_default_payment_method IS DISTINCT FROM $2",
                )
                .bind(id)
                .bind(default)
                .execute(&mut *conn)
                .await?;
                Ok(Processed::Applied)
            }
            Handling::None => Ok(Processed::Ignored),
        }
    }

    /// Mirrors a subscription; one Stripe no longer has is nothing to mirror.
    async fn sync_or_gone(
        &self,
        conn: &mut PgConnection,
        id: &str,
    ) -> Result<Processed, BillingError> {
        match self.sync_subscription(conn, id).await {
            Ok(Synced { .. }) => Ok(Processed::Applied),
            Err(BillingError::Stripe(e)) if e.is_missing() => Ok(Processed::Ignored),
            Err(e) => Err(e),
        }
    }

    /// 8.1: puts stored events back in the queue. Returns the ids that were found; the rest are unknown.
    pub async fn replay(&self, event_ids: &[String]) -> Result<Vec<String>, BillingError> {
        let found: Vec<String> = sqlx::query_scalar(
            "UPDATE stripe_events SET status = 'pending', next_attempt_at = now(), processed_at = NULL
              WHERE event_id = ANY($1) RETURNING event_id",
        )
        .bind(event_ids)
        .fetch_all(&self.pg)
        .await?;
        if !found.is_empty() {
            self.wake.notify_one();
        }
        Ok(found)
    }

    /// Refreshes the queue gauges.
    pub async fn refresh_queue_metrics(&self) -> Result<(), BillingError> {
        let (depth, oldest): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), extract(epoch FROM now() - min(received_at))::float8
               FROM stripe_events WHERE status IN ('pending', 'failed')",
        )
        .fetch_one(&self.pg)
        .await?;
        self.metrics.queue_depth.set(depth);
        #[expect(
            clippy::cast_possible_truncation,
            reason = "seconds of age, far below i64::MAX"
        )]
        self.metrics
            .oldest_pending
            .set(oldest.unwrap_or(0.0) as i64);
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_and_backoff() {
        assert!(is_event_id("evt_1NpQ2abc_def"));
        for bad in ["", "evt_", "ev_1", "evt_1-2", "evt_ 1"] {
            assert!(!is_event_id(bad), "{bad}");
        }
        assert_eq!(retry_delay_secs(1), 2);
        assert_eq!(retry_delay_secs(3), 8);
        assert_eq!(retry_delay_secs(40), 300);
    }
}
