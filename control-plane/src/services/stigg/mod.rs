//! The Stigg mirror: a transactional outbox (CONTRACT §8; SEED 1.4).
//!
//! # Who writes, who drains
//!
//! * **Writers** queue operations with [`Stigg::queue`] in the *same transaction* as the change they mirror: billing when
//!   it links a Stripe customer or mirrors a subscription (`services::billing`), and 1.4 `stigg/provision`. So the
//!   order is always Stripe → database → Stigg, and a change is in the outbox iff it is in the database.
//! * **The drain** ([`Stigg::deliver_next`]; Stigg operations are a kind of job on the control plane's one queue,
//!   `crate::queue`, run on every replica) takes only the *head* of an org's queue (its oldest undelivered
//!   operation) with the queue's claim (a lease, no transaction held across the call to Stigg): operations of one
//!   org go out in order, one at a time across all replicas, while other orgs' proceed. A failure records the
//!   attempt, the error and the next attempt's time (the queue's backoff, to `TOLLGATE_STIGG_RETRY_MAX_MS`) and
//!   holds only that org's queue; after `TOLLGATE_QUEUE_MAX_ATTEMPTS` the operation is `dead` and the org's next
//!   ones proceed.
//! * **Coalescing**: an update carries the subscription's whole state, so queueing one supersedes the same
//!   subscription's updates still waiting.
//! * **Nothing queued twice**: an operation is queued only when its content differs from the newest row of the same
//!   operation on the same subject (customer or subscription) that is waiting, failing or delivered (or skipped,
//!   while Stigg is not configured). So repeating 1.4 adds nothing — also while Stigg is down, when the first call's
//!   rows are still failing — while A → B → A queues A again, because B is newer. Writers that race past the
//!   comparison (neither sees the other's uncommitted row) insert the same [`dedup_key`] — it names the row compared
//!   with — and the unique index keeps one.
//! * **Idempotent delivery**: imports and updates set state; Stigg's "already exists" / "already cancelled" answers
//!   count as delivered. A repeated delivery leaves Stigg as it was.
//! * Without `STIGG_API_KEY`, operations are recorded as `skipped` (and counted), never an error.
//!
//! Nothing on the proxy, or on the quota, usage and entitlement endpoints, waits for Stigg.

pub mod ops;

use crate::queue;
use crate::stigg::{StiggClient, StiggError, StiggMetrics, StiggOp};
use chrono::{DateTime, Utc};
use ops::Queued;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use tokio::sync::Notify;
use tollgate_common::domain::{OrgId, PlanCatalog, PlanCode};
use tollgate_common::store::subscriptions as subscriptions_store;
use utoipa::ToSchema;

/// Why a mirror operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StiggMirrorError {
    /// No such org.
    #[error("orgId: no such organization; create it with /api/orgs.create")]
    UnknownOrg,
    /// A request field does not match the org's billing state (422).
    #[error("{field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    /// PostgreSQL.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// 1.4's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// Stigg accepted every operation.
    Done,
    /// Stigg did not (unreachable, or it refused): queued, the worker finishes later.
    Queued,
    /// Stigg is not configured: recorded as skipped.
    Skipped,
}

/// The outbox row's `dedup_key`: the org, the operation, its subject and content, the id of the newest row of the
/// same operation and subject that it follows (`None`: the first), and whether it is queued for delivery or recorded
/// as skipped. Two writers queueing the same change after the same row derive the same key; a change back to an
/// earlier content follows a different row, so it gets a new key.
pub fn dedup_key(org_id: i64, item: &Queued, follows: Option<i64>, configured: bool) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let follows = follows.map_or_else(|| "-".to_owned(), |id| id.to_string());
    let class = if configured { "queued" } else { "skipped" };
    // serde_json writes objects with sorted keys: equal content, equal bytes.
    for part in [
        org_id.to_string().as_str(),
        item.op.as_str(),
        item.subject.as_str(),
        follows.as_str(),
        class,
        item.input.to_string().as_str(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    format!("v2:{}", hex::encode(hash.finalize()))
}

/// Queues `items` for `org_id` in the caller's transaction, each unless the newest row of its operation on its
/// subject has the same content (see the module docs). With `configured` false they are recorded as skipped.
/// Returns how many rows were added.
async fn enqueue(
    conn: &mut PgConnection,
    org_id: i64,
    items: &[Queued],
    configured: bool,
    metrics: &StiggMetrics,
) -> Result<usize, sqlx::Error> {
    // The rows a new operation is compared with: what Stigg has or will get. Superseded rows never reach it, and
    // skipped ones only stand while Stigg is not configured (once it is, they are queued for real).
    let standing: &[&str] = if configured {
        &["pending", "failed", "done"]
    } else {
        &["pending", "failed", "done", "skipped"]
    };
    let mut added = 0;
    for item in items {
        let newest: Option<(i64, bool)> = sqlx::query_as(
            "SELECT id, payload = $4 FROM stigg_outbox
              WHERE org_id = $1 AND subject = $2 AND operation = $3 AND status = ANY($5)
              ORDER BY id DESC LIMIT 1",
        )
        .bind(org_id)
        .bind(&item.subject)
        .bind(item.op.as_str())
        .bind(sqlx::types::Json(&item.input))
        .bind(standing)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((_, true)) = newest {
            continue;
        }
        if item.op == StiggOp::UpdateSubscription {
            sqlx::query(
                "UPDATE stigg_outbox SET status = 'superseded', done_at = now()
                  WHERE id IN (SELECT id FROM stigg_outbox
                                WHERE org_id = $1 AND subject = $2 AND operation = 'update_subscription'
                                  AND status IN ('pending', 'failed')
                                  AND (lease_until IS NULL OR lease_until <= now())
                                FOR UPDATE SKIP LOCKED)",
            )
            .bind(org_id)
            .bind(&item.subject)
            .execute(&mut *conn)
            .await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO stigg_outbox (org_id, operation, subject, payload, dedup_key, status, done_at)
             VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 = 'skipped' THEN now() END)
             ON CONFLICT (dedup_key) DO NOTHING",
        )
        .bind(org_id)
        .bind(item.op.as_str())
        .bind(&item.subject)
        .bind(sqlx::types::Json(&item.input))
        .bind(dedup_key(
            org_id,
            item,
            newest.map(|(id, _)| id),
            configured,
        ))
        .bind(if configured { "pending" } else { "skipped" })
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            continue;
        }
        added += 1;
        if !configured {
            metrics
                .deliveries
                .with_label_values(&[item.op.as_str(), "skipped"])
                .inc();
        }
    }
    Ok(added)
}

/// Stigg operations as a kind of job on the queue: ordered per org, oldest first.
pub static STIGG_OPS: queue::Spec = queue::Spec {
    kind: "stigg_op",
    table: "stigg_outbox",
    id: "id",
    key: "{a}.org_id::text",
    same_key: "{h}.org_id = {j}.org_id",
    seq: "{a}.id",
    created: "{a}.created_at",
    returning: "id, org_id, operation, payload, attempts, lease_token",
};

/// How long a claimed operation stays invisible to other workers: longer than any delivery
/// (`TOLLGATE_STIGG_BUDGET_MS` is at most 60 s), so only a dead worker's operations are taken again.
const LEASE: std::time::Duration = std::time::Duration::from_secs(90);

/// An outbox row, as delivery reads it.
#[derive(sqlx::FromRow)]
struct Item {
    id: i64,
    org_id: i64,
    operation: String,
    payload: sqlx::types::Json<serde_json::Value>,
    attempts: i32,
    lease_token: uuid::Uuid,
}

/// A waiting or failing operation, for the operator.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct StuckItem {
    pub id: i64,
    /// The org (Clerk id).
    #[schema(example = "org_2aBcDeF")]
    pub org_id: String,
    #[schema(example = "import_subscription")]
    pub operation: String,
    /// `cus_…` or `sub_…`.
    pub subject: String,
    #[schema(example = "failed")]
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// What one delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Stigg took it.
    Delivered,
    /// It failed and will be retried (the error is recorded).
    Failed(String),
}

/// Delivers the outbox.
pub struct Stigg {
    pg: PgPool,
    catalog: Arc<PlanCatalog>,
    client: Option<StiggClient>,
    retry_max: std::time::Duration,
    /// Woken when operations are queued, so a worker delivers at once.
    pub wake: Notify,
    /// Delivery metrics.
    pub metrics: StiggMetrics,
    /// The queue's metrics and retry limit.
    queue: queue::Queue,
}

impl Stigg {
    /// The mirror; `client` is `None` without `STIGG_API_KEY`. A failed delivery is retried after 2 s, doubling up
    /// to `retry_max`.
    pub fn new(
        pg: PgPool,
        catalog: Arc<PlanCatalog>,
        client: Option<StiggClient>,
        retry_max: std::time::Duration,
        metrics: StiggMetrics,
        queue: queue::Queue,
    ) -> Arc<Self> {
        Arc::new(Self {
            pg,
            catalog,
            client,
            retry_max,
            wake: Notify::new(),
            metrics,
            queue,
        })
    }

    /// Whether Stigg is configured (else operations are skipped).
    pub fn configured(&self) -> bool {
        self.client.is_some()
    }

    /// Queues `items` for `org_id` in the caller's transaction (recorded as skipped when Stigg is not configured),
    /// and wakes a local worker. A wake that comes before the caller commits finds nothing; the worker's poll then
    /// picks the items up within [`crate::queue::POLL`].
    pub async fn queue(
        &self,
        conn: &mut PgConnection,
        org_id: i64,
        items: &[Queued],
    ) -> Result<(), sqlx::Error> {
        if items.is_empty() {
            return Ok(());
        }
        if enqueue(conn, org_id, items, self.configured(), &self.metrics).await? > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The worker's step: delivers the head of some org's queue that no other replica holds. `Ok(None)` when nothing
    /// is due.
    pub async fn deliver_next(&self) -> Result<Option<Delivery>, StiggMirrorError> {
        self.deliver_head(None).await
    }

    /// Delivers `org_id`'s queue now, head first, until it is empty, one fails, or another replica holds its head.
    /// Returns whether the queue is empty.
    pub async fn deliver_org(&self, org_id: i64) -> Result<bool, StiggMirrorError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match self.deliver_head(Some(org_id)).await? {
                Some(Delivery::Delivered) => continue,
                Some(Delivery::Failed(_)) => return Ok(false),
                None => {}
            }
            // Nothing due that we could take: the queue is empty, a worker holds its head, or its head waits for
            // a retry. Wait briefly for a worker that holds it; give up on a failing one.
            let (waiting, failing): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE status = 'failed')
                   FROM stigg_outbox WHERE org_id = $1 AND status IN ('pending', 'failed')",
            )
            .bind(org_id)
            .fetch_one(&self.pg)
            .await?;
            if waiting == 0 {
                return Ok(true);
            }
            if failing > 0 || tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    async fn deliver_head(&self, org: Option<i64>) -> Result<Option<Delivery>, StiggMirrorError> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        // The queue's claim, committed at once: nothing is held while Stigg answers.
        let item: Option<Item> = sqlx::query_as(&queue::claim_sql(&STIGG_OPS))
            .bind(uuid::Uuid::new_v4())
            .bind(LEASE.as_secs_f64())
            .bind(org.map(|o| o.to_string()))
            .fetch_optional(&self.pg)
            .await?;
        let Some(item) = item else {
            return Ok(None);
        };
        let outcome = match StiggOp::parse(&item.operation) {
            Some(op) => client.execute(op, &item.payload.0).await.map(|_| op),
            None => Err(StiggError::Refused {
                operation: "unknown",
                code: None,
                message: format!("unknown operation `{}`", item.operation),
            }),
        };
        let delivery = match outcome {
            Ok(_) => {
                sqlx::query(
                    "UPDATE stigg_outbox SET status = 'done', done_at = now(), attempts = attempts + 1,
                            last_error = NULL, lease_token = NULL, lease_until = NULL
                      WHERE id = $1 AND lease_token = $2",
                )
                .bind(item.id)
                .bind(item.lease_token)
                .execute(&self.pg)
                .await?;
                self.queue.metrics.attempt(&STIGG_OPS, None);
                Delivery::Delivered
            }
            Err(e) => {
                let attempts = item.attempts + 1;
                let message = e.to_string();
                let failure = self
                    .queue
                    .fail(
                        &self.pg,
                        &STIGG_OPS,
                        (item.id, item.lease_token),
                        item.attempts,
                        &message,
                        self.retry_max,
                    )
                    .await?;
                match &e {
                    StiggError::Unavailable(_) => {
                        tracing::debug!(org.internal_id = item.org_id, stigg.operation = %item.operation, error = %e, "stigg delivery failed; retrying");
                    }
                    StiggError::Refused { .. } => {
                        tracing::warn!(org.internal_id = item.org_id, stigg.operation = %item.operation, attempts, status = failure.status, error = %e, "stigg refused an operation");
                    }
                }
                Delivery::Failed(message)
            }
        };
        Ok(Some(delivery))
    }

    /// 1.4: checks that the Stripe ids are the org's own and `plan` is the subscription's plan, queues the customer
    /// and the subscription for Stigg in the same transaction as recording the provisioning, and delivers them at
    /// once. Idempotent: what is already waiting or delivered with the same content is not queued again (calls for
    /// one org queue on its row, so concurrent ones compare with each other's rows), and the answer says whether
    /// the org's queue is delivered.
    #[tracing::instrument(skip_all, fields(org.id = %org))]
    pub async fn provision(
        &self,
        org: &OrgId,
        customer: &str,
        subscription: &str,
        plan: &str,
    ) -> Result<Provisioned, StiggMirrorError> {
        let invalid = |field, detail: &str| StiggMirrorError::Invalid {
            field,
            detail: detail.to_owned(),
        };
        let mut tx = self.pg.begin().await?;
        let locked = tollgate_common::store::orgs::lock_by_clerk(&mut *tx, org)
            .await?
            .ok_or(StiggMirrorError::UnknownOrg)?;
        let (org_id, name, own_customer) = (locked.id, locked.name, locked.stripe_customer);
        if own_customer.as_deref() != Some(customer) {
            return Err(invalid(
                "stripeCustomerId",
                "is not this organization's Stripe customer",
            ));
        }
        let stored = subscriptions_store::by_id(&mut tx, subscription)
            .await?
            .filter(|s| s.org_id == org_id && s.state.customer == customer)
            .ok_or_else(|| {
                invalid(
                    "stripeSubscriptionId",
                    "is not a subscription of this organization's customer",
                )
            })?;
        let code = PlanCode::parse(plan)
            .ok()
            .filter(|code| self.catalog.plan(code).is_some())
            .ok_or_else(|| invalid("planCode", "is not a plan of PLANS_CONFIG"))?;
        if code != stored.state.plan {
            return Err(StiggMirrorError::Invalid {
                field: "planCode",
                detail: format!("the subscription is on `{}`", stored.state.plan),
            });
        }
        sqlx::query("UPDATE orgs SET stigg_provisioned_at = now() WHERE id = $1")
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
        let items = [
            ops::customer(org, customer, &name, None),
            ops::import(org, &stored.state),
            ops::update(&stored.state),
        ];
        enqueue(&mut tx, org_id, &items, self.configured(), &self.metrics).await?;
        tx.commit().await?;
        if !self.configured() {
            return Ok(Provisioned::Skipped);
        }
        Ok(if self.deliver_org(org_id).await? {
            Provisioned::Done
        } else {
            self.wake.notify_one();
            Provisioned::Queued
        })
    }

    /// Operations waiting or failing, oldest first (for the operator).
    pub async fn stuck(&self, limit: i64) -> Result<Vec<StuckItem>, StiggMirrorError> {
        Ok(sqlx::query_as(
            "SELECT o.id, g.clerk_org_id AS org_id, o.operation, o.subject, o.status, o.attempts, o.last_error,
                    o.next_attempt_at, o.created_at
               FROM stigg_outbox o JOIN orgs g ON g.id = o.org_id
              WHERE o.status IN ('pending', 'failed', 'dead')
              ORDER BY o.attempts DESC, o.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pg)
        .await?)
    }

    /// Makes failed operations due now (their org's order is kept). Returns the ids that were waiting.
    pub async fn requeue(&self, ids: &[i64]) -> Result<Vec<i64>, StiggMirrorError> {
        let found: Vec<i64> = sqlx::query_scalar(
            "UPDATE stigg_outbox SET status = 'pending', next_attempt_at = now(),
                    attempts = CASE WHEN status = 'dead' THEN 0 ELSE attempts END
              WHERE id = ANY($1) AND status IN ('pending', 'failed', 'dead')
                AND (lease_until IS NULL OR lease_until <= now())
             RETURNING id",
        )
        .bind(ids)
        .fetch_all(&self.pg)
        .await?;
        self.wake.notify_one();
        Ok(found)
    }
}

impl queue::Worker for Stigg {
    fn spec(&self) -> &'static queue::Spec {
        &STIGG_OPS
    }

    async fn step(&self) -> Result<bool, String> {
        match self.deliver_next().await {
            Ok(Some(Delivery::Delivered | Delivery::Failed(_))) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }

    fn gauges(&self) -> (&PgPool, &queue::QueueMetrics) {
        (&self.pg, &self.queue.metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::dedup_key;
    use crate::services::stigg::ops::Queued;
    use crate::stigg::StiggOp;
    use serde_json::{Map, Value, json};

    #[test]
    fn the_dedup_key_names_the_change_and_the_row_it_follows() {
        let item = |input: Value| Queued {
            op: StiggOp::UpdateSubscription,
            subject: "sub_1".to_owned(),
            input,
        };
        let a = item(json!({"refId": "sub_1", "trialEndDate": null, "billingPeriod": "MONTHLY"}));
        let key = dedup_key(7, &a, Some(41), true);
        assert!(key.starts_with("v2:") && key.len() == 3 + 64, "{key}");
        assert_eq!(
            key,
            dedup_key(7, &a.clone(), Some(41), true),
            "deterministic"
        );

        let mut reordered = Map::new();
        reordered.insert("billingPeriod".into(), json!("MONTHLY"));
        reordered.insert("trialEndDate".into(), Value::Null);
        reordered.insert("refId".into(), json!("sub_1"));
        assert_eq!(
            key,
            dedup_key(7, &item(Value::Object(reordered)), Some(41), true),
            "the same content in another key order"
        );

        let b = item(
            json!({"refId": "sub_1", "trialEndDate": "2026-12-15T00:00:00Z", "billingPeriod": "MONTHLY"}),
        );
        let mut other_subject = a.clone();
        other_subject.subject = "sub_2".to_owned();
        let mut other_op = a.clone();
        other_op.op = StiggOp::ImportSubscription;
        for (other, what) in [
            (dedup_key(7, &b, Some(41), true), "other content"),
            (
                dedup_key(7, &a, Some(42), true),
                "after another row (A → B → A)",
            ),
            (dedup_key(7, &a, None, true), "the first of its kind"),
            (dedup_key(7, &a, Some(41), false), "recorded as skipped"),
            (dedup_key(8, &a, Some(41), true), "another org"),
            (
                dedup_key(7, &other_subject, Some(41), true),
                "another subject",
            ),
            (dedup_key(7, &other_op, Some(41), true), "another operation"),
        ] {
            assert_ne!(key, other, "{what}");
        }
    }
}
