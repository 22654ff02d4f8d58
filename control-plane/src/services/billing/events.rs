//! Stripe webhook events: 2.3 intake, 2.4 processing (by the worker or on demand), 8.1 replay.
//!
//! # Exactly once
//!
//! * **Intake** verifies the signature on the raw body, then inserts the event by its id (`ON CONFLICT DO NOTHING`):
//!   a repeated delivery stores nothing new and gets the same answer.
//! * **Processing** claims an event with a lease in one short statement (`FOR UPDATE SKIP LOCKED` picks it, so
//!   replicas take different events; its next attempt moves to the lease's end, so no other worker takes it
//!   meanwhile), reads the object the event concerns back from Stripe with no connection held — never trusting the
//!   event's copy or its order — and then mirrors it and marks the event applied in one short transaction. Only the
//!   lease's holder marks it: a worker that dies leaves an event that is taken again when its lease ends, and a
//!   worker whose lease was taken over marks nothing. A failure writes nothing and records the attempt, the error
//!   and the next attempt's time instead.
//! * **Applying twice changes nothing**: the mirror writes Stripe's current state, and the same state is no change.
//!   So replays (8.1), duplicates and out-of-order events all converge on what Stripe says now.
//!
//! # Ignored: terminal, visible, replayable
//!
//! An event whose object Tollgate can never mirror ends `ignored` with an [`IgnoreReason`] after one attempt and is
//! never retried: an event type Tollgate does not act on; a customer no org owns that has no `metadata.orgId`
//! (made outside Tollgate: a Dashboard subscription, another product); a price no plan of PLANS_CONFIG names; an
//! object Stripe answers `resource_missing` for (a deleted draft invoice, a deleted customer); an object that
//! concerns no subscription (a one-off invoice). It is counted (`tollgate_cp_webhook_events_total{outcome=
//! "ignored"}` and `tollgate_cp_webhook_ignored_total{reason}`), listed by `GET /api/admin/webhooks.list`, and 8.1
//! replays it like any other (it becomes `applied` if, say, its customer has since been linked to an org). Only
//! transient failures — Stripe unreachable, 5xx, 429, `lock_timeout`, an unreadable answer, the database — are
//! `failed` and retried with backoff.

use super::{Billing, BillingError, subscriptions::SubscriptionRead};
use crate::queue;
use crate::services::batch::Write;
use crate::stripe::Op;
use crate::stripe::signature;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use stripe_billing::invoice::RetrieveInvoice;
use stripe_billing::subscription_schedule::RetrieveSubscriptionSchedule;
use stripe_core::customer::{RetrieveCustomer, RetrieveCustomerReturned};
use tollgate_common::domain::IgnoreReason;
use tollgate_common::store::subscriptions as store;
use uuid::Uuid;

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
    /// Nothing Tollgate can mirror, for good (terminal, never retried; replayable by 8.1).
    Ignored(IgnoreReason),
}

impl Processed {
    /// The event's stored status, and its `tollgate_cp_webhook_events_total` outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored(_) => "ignored",
        }
    }

    /// Why it was ignored.
    pub fn reason(self) -> Option<IgnoreReason> {
        match self {
            Self::Applied => None,
            Self::Ignored(reason) => Some(reason),
        }
    }
}

/// The parts of an event intake and processing need: a narrow type of our own (Stripe's `Event` carries every
/// resource type of every API version in `data.object`; intake needs only its id and type).
#[derive(Deserialize)]
pub(crate) struct Envelope {
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

/// A claimed event, as processing reads it.
#[derive(sqlx::FromRow)]
struct StoredEvent {
    event_id: String,
    event_type: String,
    object_id: String,
    attempts: i32,
    /// When it was claimed (PostgreSQL's clock): before its object is read back from Stripe.
    claimed_at: DateTime<Utc>,
    /// This claim's lease: only its holder marks the event.
    lease_token: Uuid,
}

/// What reading an event's object back from Stripe found, to be written in one short transaction.
enum Observed {
    /// The subscription the event concerns.
    Subscription(Box<SubscriptionRead>),
    /// A customer's default payment method.
    Customer {
        ticket: i64,
        id: String,
        default_method: Option<String>,
        /// `metadata.orgId`: a customer Tollgate made, even before its org row names it.
        org_hint: Option<String>,
    },
    /// Nothing to mirror, for good: an event type Tollgate does not act on, an object Stripe no longer has, one
    /// that concerns no subscription.
    Nothing(IgnoreReason),
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
            | "invoice.payment_action_required"
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

/// A claimed event's lease, in Stripe budgets (processing makes at most a few Stripe reads, each within the budget),
/// and at least [`MIN_LEASE`].
const LEASE_BUDGETS: u32 = 6;
const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `id` is an event id the `stripe_events` table accepts.
pub fn is_event_id(id: &str) -> bool {
    id.strip_prefix("evt_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 250
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Stripe events as a kind of job on the queue: ordered per object (events naming no object stand alone), in
/// Stripe's order.
pub static STRIPE_EVENTS: queue::Spec = queue::Spec {
    kind: "stripe_event",
    table: "stripe_events",
    id: "event_id",
    key: "COALESCE(NULLIF({a}.object_id, ''), {a}.event_id)",
    same_key: "{h}.object_id = {j}.object_id AND {j}.object_id <> ''",
    seq: "({a}.stripe_created, {a}.event_id)",
    created: "{a}.received_at",
    returning: "event_id, event_type, object_id, attempts, clock_timestamp() AS claimed_at, lease_token",
};

/// The longest wait between two attempts of an event.
pub const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(300);

/// A stored event, as the operator's listing shows it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedEvent {
    #[schema(example = "evt_1Q2x")]
    pub event_id: String,
    #[serde(rename = "type")]
    #[schema(example = "customer.subscription.created")]
    pub event_type: String,
    /// The id of the object it concerns (`sub_…`, `in_…`, `cus_…`), empty when it names none.
    pub object_id: String,
    /// `pending`, `failed` (retried with backoff), `applied` or `ignored` (terminal; replayable by 8.1).
    #[schema(example = "ignored")]
    pub status: String,
    /// Why it was ignored: `unhandled_type`, `foreign_customer`, `unknown_price`, `object_deleted`,
    /// `no_subscription`.
    #[serde(rename = "reason")]
    #[schema(example = "foreign_customer")]
    pub ignored_reason: Option<String>,
    /// The last failure, or what an ignored event concerned.
    pub last_error: Option<String>,
    pub attempts: i32,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    /// When a waiting event is tried next.
    pub next_attempt_at: DateTime<Utc>,
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

    /// 2.4: processes one stored event now, whatever its status (processing is idempotent). It never waits for a
    /// worker: it takes the event's lease over (the worker's later mark then changes nothing), so it answers
    /// within the Stripe budget even while Stripe is down. Unknown id: 404 naming `eventId`.
    pub async fn process_event(&self, event_id: &str) -> Result<Processed, BillingError> {
        let event: Option<StoredEvent> = sqlx::query_as(
            "UPDATE stripe_events SET lease_token = $2, lease_until = now() + make_interval(secs => $3),
                    next_attempt_at = now() + make_interval(secs => $3)
              WHERE event_id = $1
             RETURNING event_id, event_type, object_id, attempts, clock_timestamp() AS claimed_at, lease_token",
        )
        .bind(event_id)
        .bind(Uuid::new_v4())
        .bind(self.event_lease().as_secs_f64())
        .fetch_optional(&self.pg)
        .await?;
        let event = event.ok_or_else(|| BillingError::NotFound {
            field: "eventId",
            detail: "no such event has been received".to_owned(),
        })?;
        self.process_claimed(&event).await?
    }

    /// The worker's step: claims the next due event no other worker holds and processes it. `Ok(None)` when none
    /// is due. A processing failure is recorded on the event (and is `Ok`): the caller moves on.
    pub async fn process_next(
        &self,
    ) -> Result<Option<(String, Result<Processed, String>)>, BillingError> {
        // The queue's claim: one statement, committed at once; the event's next attempt moves to the lease's end, so
        // other workers skip it while this one reads Stripe, and take it again if this one dies. Only the head of
        // its object's waiting events is taken.
        let event: Option<StoredEvent> = sqlx::query_as(&queue::claim_sql(&STRIPE_EVENTS))
            .bind(Uuid::new_v4())
            .bind(self.event_lease().as_secs_f64())
            .bind(None::<String>)
            .fetch_optional(&self.pg)
            .await?;
        let Some(event) = event else {
            return Ok(None);
        };
        let outcome = self.process_claimed(&event).await?;
        Ok(Some((event.event_id, outcome.map_err(|e| e.to_string()))))
    }

    /// How long a claimed event stays invisible to other workers: longer than any processing (a few Stripe reads,
    /// each within the budget), so only a dead worker's events are taken again.
    fn event_lease(&self) -> std::time::Duration {
        (self.settings.api.budget * LEASE_BUDGETS).max(MIN_LEASE)
    }

    /// Processes an event this caller holds the lease of: reads its object back from Stripe with no connection
    /// held, then mirrors it and marks the event in one short transaction; a failure is recorded on the event. The
    /// outer error: the failure could not be recorded (the lease ends and the event is taken again).
    async fn process_claimed(
        &self,
        event: &StoredEvent,
    ) -> Result<Result<Processed, BillingError>, BillingError> {
        let applied = match self.observe(event).await {
            Ok(observed) => self.apply(event, &observed).await,
            Err(e) => Err(e),
        };
        let applied = match applied {
            // Not Tollgate's to mirror, ever: terminal, with its reason and what it was.
            Err(BillingError::NotOurs { reason, detail }) => {
                self.ignore(event, reason, &detail).await
            }
            other => other,
        };
        match applied {
            Ok((processed, settled)) => {
                self.queue.attempt(&STRIPE_EVENTS, None);
                self.metrics
                    .events
                    .with_label_values(&[processed.as_str()])
                    .inc_by(settled);
                if let Some(reason) = processed.reason() {
                    self.metrics
                        .ignored
                        .with_label_values(&[reason.as_str()])
                        .inc_by(settled);
                    // Counted and listed; an account busy with objects made elsewhere would flood the log.
                    tracing::debug!(
                        stripe.event_id = %event.event_id,
                        stripe.event_type = %event.event_type,
                        reason = reason.as_str(),
                        "stripe event ignored: nothing Tollgate can mirror"
                    );
                }
                Ok(Ok(processed))
            }
            Err(e) => {
                let attempts = event.attempts + 1;
                let failure = queue::after_failure(attempts, &self.queue_policy());
                sqlx::query(
                    "UPDATE stripe_events SET status = $6, ignored_reason = NULL, attempts = $3, last_error = $4,
                            next_attempt_at = now() + make_interval(secs => $5), processed_at = NULL,
                            lease_token = NULL, lease_until = NULL
                      WHERE event_id = $1 AND lease_token = $2",
                )
                .bind(&event.event_id)
                .bind(event.lease_token)
                .bind(attempts)
                .bind(truncate(&e.to_string(), 1000))
                .bind(failure.delay.as_secs_f64())
                .bind(failure.status)
                .execute(&self.pg)
                .await?;
                self.queue.attempt(&STRIPE_EVENTS, Some(&failure));
                self.metrics.events.with_label_values(&["failed"]).inc();
                tracing::warn!(
                    stripe.event_id = %event.event_id,
                    stripe.event_type = %event.event_type,
                    attempts,
                    error = %e,
                    "stripe event failed; retrying with backoff"
                );
                Ok(Err(e))
            }
        }
    }

    /// Marks the event (and the waiting events it settles) `ignored` for `reason`, keeping `detail` as what the
    /// operator reads. Returns the outcome and how many events were marked.
    async fn ignore(
        &self,
        event: &StoredEvent,
        reason: IgnoreReason,
        detail: &str,
    ) -> Result<(Processed, u64), BillingError> {
        let processed = Processed::Ignored(reason);
        let mut tx = self.pg.begin().await?;
        let settled = self
            .settle_with(&mut tx, event, processed, Some(detail))
            .await?;
        tx.commit().await?;
        Ok((processed, settled))
    }

    /// Writes what was observed and marks the event (and the waiting events it settles) in one short transaction.
    /// Returns the outcome and how many events were marked.
    async fn apply(
        &self,
        event: &StoredEvent,
        observed: &Observed,
    ) -> Result<(Processed, u64), BillingError> {
        let mut tx = self.pg.begin().await?;
        let mut changed_org = None;
        let processed = match observed {
            Observed::Subscription(read) => {
                let org_id = self.write_read(&mut tx, read).await?.org_id;
                changed_org = Some(org_id);
                if event.event_type == "invoice.created" {
                    // Stripe drafted a renewal invoice: the closing period's overage is reported now, not after
                    // the coalescing interval, well inside the finalisation grace.
                    super::meter_reports::due_now(&mut tx, org_id).await?;
                }
                Processed::Applied
            }
            Observed::Customer {
                ticket,
                id,
                default_method,
                org_hint,
            } => {
                let owned = tollgate_common::store::orgs::id_by_stripe_customer(&mut *tx, id)
                    .await?
                    .is_some();
                if !owned && org_hint.is_none() {
                    drop(tx);
                    return self
                        .ignore(
                            event,
                            IgnoreReason::ForeignCustomer,
                            &format!(
                                "customer {id} belongs to no organization and has no metadata.orgId"
                            ),
                        )
                        .await;
                }
                if store::newer_read(&mut tx, id, *ticket).await? {
                    sqlx::query(
                        "UPDATE orgs SET stripe_default_payment_method = $2, updated_at = now()
                          WHERE stripe_customer_id = $1 AND stripe_default_payment_method IS DISTINCT FROM $2",
                    )
                    .bind(id)
                    .bind(default_method.as_deref())
                    .execute(&mut *tx)
                    .await?;
                }
                Processed::Applied
            }
            Observed::Nothing(reason) => Processed::Ignored(*reason),
        };
        let settled = self.settle_with(&mut tx, event, processed, None).await?;
        tx.commit().await?;
        if let Some(org_id) = changed_org {
            self.committed(org_id).await;
        }
        if let Observed::Subscription(read) = observed {
            self.keep_overage_items(read).await;
        }
        Ok((processed, settled))
    }

    /// Marks `event` processed with `outcome` — only if this caller still holds its lease: one that ran out and was
    /// taken by another worker (or by 2.4) is theirs to mark, and what was mirrored here was idempotent — and with
    /// it every other waiting event about the same object that is processed the same way, arrived before `event`
    /// was claimed, and is not leased to another worker: Stripe had sent them before the object was read back, so
    /// what was just mirrored already includes them (a backlog of one subscription's updates costs one Stripe
    /// read, not one per event). Returns how many events were marked.
    async fn settle_with(
        &self,
        tx: &mut PgConnection,
        event: &StoredEvent,
        processed: Processed,
        detail: Option<&str>,
    ) -> Result<u64, BillingError> {
        let outcome = processed.as_str();
        let reason = processed.reason().map(IgnoreReason::as_str);
        let detail = detail.map(|d| truncate(d, 1000));
        let own = sqlx::query(
            "UPDATE stripe_events SET status = $3, ignored_reason = $4, attempts = attempts + 1, last_error = $5,
                    processed_at = now(), lease_token = NULL, lease_until = NULL
              WHERE event_id = $1 AND lease_token = $2",
        )
        .bind(&event.event_id)
        .bind(event.lease_token)
        .bind(outcome)
        .bind(reason)
        .bind(detail.as_deref())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let handling = Handling::of(&event.event_type);
        if handling == Handling::None || event.object_id.is_empty() {
            return Ok(own);
        }
        let waiting: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_id, event_type FROM stripe_events
              WHERE object_id = $1 AND status IN ('pending', 'failed') AND received_at < $2 AND event_id <> $3
                AND (lease_until IS NULL OR lease_until <= now())
              LIMIT $4 FOR UPDATE SKIP LOCKED",
        )
        .bind(&event.object_id)
        .bind(event.claimed_at)
        .bind(&event.event_id)
        .bind(MAX_COALESCED)
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<String> = waiting
            .into_iter()
            .filter(|(_, kind)| Handling::of(kind) == handling)
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            return Ok(own);
        }
        let marked = sqlx::query(
            "UPDATE stripe_events SET status = $2, ignored_reason = $3, attempts = attempts + 1, last_error = $4,
                    processed_at = now(), lease_token = NULL, lease_until = NULL
              WHERE event_id = ANY($1)",
        )
        .bind(&ids)
        .bind(outcome)
        .bind(reason)
        .bind(detail.as_deref())
        .execute(&mut *tx)
        .await?;
        Ok(own + marked.rows_affected())
    }

    /// Reads the event's object back from Stripe (no connection held but for the read's ticket): what the mirror
    /// will write.
    async fn observe(&self, event: &StoredEvent) -> Result<Observed, BillingError> {
        let id = event.object_id.as_str();
        let subscription = match Handling::of(&event.event_type) {
            Handling::Subscription => Some(id.to_owned()),
            Handling::Schedule => {
                let Some(schedule) = self
                    .stripe
                    .retrieve(Op::ScheduleRetrieve, &RetrieveSubscriptionSchedule::new(id))
                    .await?
                else {
                    return Ok(Observed::Nothing(IgnoreReason::ObjectDeleted));
                };
                schedule
                    .subscription
                    .as_ref()
                    .map(|s| s.id().as_str().to_owned())
                    .or(schedule.released_subscription)
            }
            Handling::Invoice => {
                // Stripe deletes draft invoices: one deleted before its events were processed is gone for good.
                let Some(invoice) = self
                    .stripe
                    .retrieve(Op::InvoiceRetrieve, &RetrieveInvoice::new(id))
                    .await?
                else {
                    return Ok(Observed::Nothing(IgnoreReason::ObjectDeleted));
                };
                invoice
                    .parent
                    .as_ref()
                    .and_then(|p| p.subscription_details.as_ref())
                    .map(|d| d.subscription.id().as_str().to_owned())
            }
            Handling::Customer => {
                let ticket = store::read_ticket(&self.pg).await?;
                let Some(RetrieveCustomerReturned::Customer(customer)) = self
                    .stripe
                    .retrieve(Op::CustomerRetrieve, &RetrieveCustomer::new(id))
                    .await?
                else {
                    // Gone, or answered as a deleted customer.
                    return Ok(Observed::Nothing(IgnoreReason::ObjectDeleted));
                };
                let default_method = customer
                    .invoice_settings
                    .as_ref()
                    .and_then(|s| s.default_payment_method.as_ref())
                    .map(|pm| pm.id().as_str().to_owned());
                return Ok(Observed::Customer {
                    ticket,
                    id: id.to_owned(),
                    default_method,
                    org_hint: customer
                        .metadata
                        .as_ref()
                        .and_then(|m| m.get("orgId").cloned()),
                });
            }
            Handling::None => return Ok(Observed::Nothing(IgnoreReason::UnhandledType)),
        };
        let Some(subscription) = subscription else {
            return Ok(Observed::Nothing(IgnoreReason::NoSubscription));
        };
        match self.read_subscription(&subscription).await {
            Ok(read) => Ok(Observed::Subscription(Box::new(read))),
            // One Stripe no longer has is nothing to mirror.
            Err(BillingError::Stripe(e)) if e.is_missing() => {
                Ok(Observed::Nothing(IgnoreReason::ObjectDeleted))
            }
            Err(e) => Err(e),
        }
    }

    /// 8.1: puts stored events back in the queue. Returns the ids that were found; the rest are unknown.
    pub async fn replay(&self, event_ids: &[String]) -> Result<Vec<String>, BillingError> {
        let found: Vec<String> = sqlx::query_scalar(
            "UPDATE stripe_events SET status = 'pending', ignored_reason = NULL, next_attempt_at = now(),
                    processed_at = NULL, lease_token = NULL, lease_until = NULL,
                    attempts = CASE WHEN status = 'dead' THEN 0 ELSE attempts END
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

    /// The operator's listing (`GET /api/admin/webhooks.list`): stored events with `status` (all when `None`),
    /// newest first, `limit` of them after the event `after` (the last of the previous page). An unknown `after`
    /// is 422 naming it.
    pub async fn list_events(
        &self,
        status: Option<&str>,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<ListedEvent>, BillingError> {
        let start: Option<(DateTime<Utc>, String)> = match after {
            Some(id) => Some(
                sqlx::query_as(
                    "SELECT received_at, event_id FROM stripe_events WHERE event_id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pg)
                .await?
                .ok_or_else(|| BillingError::NotFound {
                    field: "after",
                    detail: "no such event; pass the last eventId of the previous page".to_owned(),
                })?,
            ),
            None => None,
        };
        let (at, id) = start.unzip();
        Ok(sqlx::query_as(
            "SELECT event_id, event_type, object_id, status, ignored_reason, last_error, attempts, received_at,
                    processed_at, next_attempt_at
               FROM stripe_events
              WHERE ($1::text IS NULL OR status = $1)
                AND ($2::timestamptz IS NULL OR (received_at, event_id) < ($2, $3::text))
              ORDER BY received_at DESC, event_id DESC
              LIMIT $4",
        )
        .bind(status)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pg)
        .await?)
    }

    /// How events are retried.
    fn queue_policy(&self) -> queue::Policy {
        queue::Policy {
            max_attempts: self.max_attempts,
            max_delay: MAX_RETRY_DELAY,
        }
    }
}

impl queue::Worker for Billing {
    fn spec(&self) -> &'static queue::Spec {
        &STRIPE_EVENTS
    }

    async fn step(&self) -> Result<bool, String> {
        match self.process_next().await {
            Ok(Some((event_id, Ok(processed)))) => {
                tracing::debug!(stripe.event_id = %event_id, ?processed, "stripe event processed");
                Ok(true)
            }
            // Recorded on the event (attempts, last error, next attempt) and logged.
            Ok(Some((_, Err(_)))) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    fn wake(&self) -> &tokio::sync::Notify {
        &self.wake
    }

    fn gauges(&self) -> (&PgPool, &queue::QueueMetrics) {
        (&self.pg, &self.queue)
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
        let delay = |a| queue::retry_delay(a, MAX_RETRY_DELAY).as_secs();
        assert_eq!((delay(1), delay(3), delay(40)), (2, 8, 300));
    }
}
