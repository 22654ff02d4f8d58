//! One durable queue for the control plane's background work (issue 22): Stripe events, Stigg operations, and
//! the kinds usage billing adds, as kinds of job on one module.
//!
//! Each kind keeps its table (its rows carry what that kind needs), described by a [`Spec`]; everything a queue
//! does is written once here, over those specs:
//!
//! * **One claim** ([`claim_sql`]): the next due job that is the head of its ordering key (no earlier job of the
//!   same key still waits), picked `FOR UPDATE SKIP LOCKED` and leased in one short statement committed at once.
//!   Its next attempt moves to the lease's end, so other workers skip it while its holder works with no
//!   connection held, and take it again if the holder dies. Only the lease's holder records the outcome.
//! * **One ordering rule per kind**: the spec's ordering key (per object for Stripe events, per org for Stigg
//!   operations): a key's jobs run one at a time, in order; a failing head holds back only its own key.
//! * **One backoff** ([`retry_delay`]): 2 s doubling, capped.
//! * **One terminal failed state** ([`after_failure`]): after `TOLLGATE_QUEUE_MAX_ATTEMPTS` failed attempts a job
//!   is `dead`: never tried again, listed, replayable by the operator. `failed` means "retrying".
//! * **One set of metrics** ([`QueueMetrics`]): depth, age of the oldest waiting job, dead jobs, attempts by
//!   outcome, per kind.
//! * **One operator listing and replay** ([`list`], [`replay`]: `GET /api/admin/jobs.list`,
//!   `POST /api/admin/jobs.replay`).
//! * **One runner** ([`run`]): the worker loop every kind's tasks run.

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use utoipa::ToSchema;

/// How often an idle worker looks for due jobs (a local enqueue wakes one at once).
pub const POLL: Duration = Duration::from_millis(250);
/// The first retry's delay; each further failure doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// How often the queue gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// A kind of job and the table that holds its jobs. The SQL fragments are the spec's own constants (never
/// input); `{a}`, `{h}` and `{j}` stand for table aliases.
#[derive(Debug)]
pub struct Spec {
    /// The kind's name: the metric label, and `kind` in the operator's calls.
    pub kind: &'static str,
    /// The table.
    pub table: &'static str,
    /// The id column (listed and replayed as text).
    pub id: &'static str,
    /// The ordering key of row `{a}`, as text.
    pub key: &'static str,
    /// Whether rows `{h}` and `{j}` share an ordering key (written to use the table's indexes).
    pub same_key: &'static str,
    /// The order of jobs within a key, of row `{a}` (a value or a row value).
    pub seq: &'static str,
    /// When the job was queued.
    pub created: &'static str,
    /// The columns a claim returns.
    pub returning: &'static str,
}

/// Statuses a waiting job has.
const WAITING: &str = "status IN ('pending', 'failed')";

fn at(fragment: &str, alias: &str) -> String {
    fragment.replace("{a}", alias)
}

/// The claim of `spec` (see the module docs). Binds: `$1` the lease token (uuid), `$2` the lease in seconds,
/// `$3` an ordering key to take only from (or NULL for any).
pub fn claim_sql(spec: &Spec) -> String {
    let Spec {
        table,
        id,
        returning,
        ..
    } = spec;
    let same = spec.same_key.replace("{h}", "h").replace("{j}", "j");
    let (seq_h, seq_j, key_j) = (at(spec.seq, "h"), at(spec.seq, "j"), at(spec.key, "j"));
    format!(
        "UPDATE {table} SET lease_token = $1, lease_until = now() + make_interval(secs => $2),
                next_attempt_at = now() + make_interval(secs => $2)
          WHERE {id} = (SELECT j.{id} FROM {table} j
                         WHERE j.{WAITING} AND j.next_attempt_at <= now()
                           AND ($3::text IS NULL OR {key_j} = $3)
                           AND NOT EXISTS (SELECT 1 FROM {table} h
                                            WHERE h.{WAITING} AND {same} AND {seq_h} < {seq_j})
                         ORDER BY j.next_attempt_at, {seq_j}
                         LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING {returning}"
    )
}

/// How long to wait before the next attempt after `attempts` failed ones: 2 s doubling, at most `max`.
pub fn retry_delay(attempts: i32, max: Duration) -> Duration {
    let doublings = u32::try_from(attempts.clamp(1, 30) - 1).unwrap_or(0);
    FIRST_RETRY
        .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

/// A failed attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// `failed` (retried after `delay`) or `dead` (terminal).
    pub status: &'static str,
    /// When the next attempt is due (for a dead job: never, but the column needs a time).
    pub delay: Duration,
}

/// What a job that failed its `attempts`-th attempt becomes under `policy`.
pub fn after_failure(attempts: i32, policy: &Policy) -> Failure {
    if attempts >= policy.max_attempts {
        Failure {
            status: "dead",
            delay: Duration::ZERO,
        }
    } else {
        Failure {
            status: "failed",
            delay: retry_delay(attempts, policy.max_delay),
        }
    }
}

/// How a kind retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failed attempts after which a job is dead (`TOLLGATE_QUEUE_MAX_ATTEMPTS`).
    pub max_attempts: i32,
    /// The longest wait between attempts.
    pub max_delay: Duration,
}

/// What every kind shares: the metrics and the attempts after which a job is dead.
#[derive(Clone)]
pub struct Queue {
    /// The queue's metrics.
    pub metrics: QueueMetrics,
    /// `TOLLGATE_QUEUE_MAX_ATTEMPTS`.
    pub max_attempts: i32,
}

impl Queue {
    /// Records a failed attempt of `spec`'s job `id` (a `bigint` id), held under `lease` after `attempts` earlier
    /// ones: `failed`, due again after the backoff (at most `max_delay`), or `dead` at the last attempt. Only the
    /// lease's holder records it. Counted, and returned.
    pub async fn fail(
        &self,
        pg: &PgPool,
        spec: &Spec,
        (id, lease): (i64, uuid::Uuid),
        attempts: i32,
        error: &str,
        max_delay: Duration,
    ) -> Result<Failure, sqlx::Error> {
        let attempts = attempts + 1;
        let failure = after_failure(
            attempts,
            &Policy {
                max_attempts: self.max_attempts,
                max_delay,
            },
        );
        sqlx::query(&format!(
            "UPDATE {table} SET status = $3, attempts = $4, last_error = $5,
                    next_attempt_at = now() + make_interval(secs => $6), lease_token = NULL, lease_until = NULL
              WHERE {id_col} = $1 AND lease_token = $2",
            table = spec.table,
            id_col = spec.id,
        ))
        .bind(id)
        .bind(lease)
        .bind(failure.status)
        .bind(attempts)
        .bind(error.chars().take(1000).collect::<String>())
        .bind(failure.delay.as_secs_f64())
        .execute(pg)
        .await?;
        self.metrics.attempt(spec, Some(&failure));
        Ok(failure)
    }
}

// === metrics ===

/// The queue's metrics, labelled by kind.
#[derive(Clone)]
pub struct QueueMetrics {
    depth: IntGaugeVec,
    oldest: IntGaugeVec,
    dead: IntGaugeVec,
    attempts: IntCounterVec,
}

/// Outcomes of an attempt.
pub const OUTCOMES: [&str; 3] = ["done", "retry", "dead"];

impl QueueMetrics {
    /// Creates and registers the metrics for `kinds`.
    pub fn register(registry: &Registry, kinds: &[&str]) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["kind"]);
        let m = Self {
            depth: gauge(
                "tollgate_cp_queue_depth",
                "Jobs waiting (pending, or failed and retried with backoff), by kind.",
            )?,
            oldest: gauge(
                "tollgate_cp_queue_oldest_seconds",
                "Age in seconds of the oldest waiting job, by kind.",
            )?,
            dead: gauge(
                "tollgate_cp_queue_dead",
                "Jobs that failed TOLLGATE_QUEUE_MAX_ATTEMPTS times: never retried, replayable by the operator.",
            )?,
            attempts: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_queue_attempts_total",
                    "Attempts by kind and outcome: done (the job finished, whatever its result), retry (failed, \
                     tried again later), dead (failed for the last time).",
                ),
                &["kind", "outcome"],
            )?,
        };
        for kind in kinds {
            m.depth.with_label_values(&[kind]);
            m.oldest.with_label_values(&[kind]);
            m.dead.with_label_values(&[kind]);
            for outcome in OUTCOMES {
                m.attempts.with_label_values(&[kind, outcome]);
            }
        }
        registry.register(Box::new(m.depth.clone()))?;
        registry.register(Box::new(m.oldest.clone()))?;
        registry.register(Box::new(m.dead.clone()))?;
        registry.register(Box::new(m.attempts.clone()))?;
        Ok(m)
    }

    /// Counts an attempt of `spec`'s kind: `None` done, else the failure's status.
    pub fn attempt(&self, spec: &Spec, failure: Option<&Failure>) {
        let outcome = match failure {
            None => "done",
            Some(f) if f.status == "dead" => "dead",
            Some(_) => "retry",
        };
        self.attempts.with_label_values(&[spec.kind, outcome]).inc();
    }

    /// Reads `spec`'s depth, oldest waiting job and dead jobs into the gauges.
    pub async fn refresh(&self, pg: &PgPool, spec: &Spec) -> Result<(), sqlx::Error> {
        let created = at(spec.created, "q");
        let (depth, oldest, dead): (i64, Option<f64>, i64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE q.{WAITING}),
                    extract(epoch FROM now() - min({created}) FILTER (WHERE q.{WAITING}))::float8,
                    count(*) FILTER (WHERE q.status = 'dead')
               FROM {} q WHERE q.status IN ('pending', 'failed', 'dead')",
            spec.table
        ))
        .fetch_one(pg)
        .await?;
        self.depth.with_label_values(&[spec.kind]).set(depth);
        #[expect(
            clippy::cast_possible_truncation,
            reason = "seconds of age, far below i64::MAX"
        )]
        self.oldest
            .with_label_values(&[spec.kind])
            .set(oldest.unwrap_or(0.0).max(0.0) as i64);
        self.dead.with_label_values(&[spec.kind]).set(dead);
        Ok(())
    }
}

// === the operator's listing and replay ===

/// A job, as the operator's listing shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedJob {
    #[schema(example = "stigg_op")]
    pub kind: String,
    /// The job's id in its kind (an event id, an outbox row id).
    #[schema(example = "42")]
    pub id: String,
    /// Its ordering key (the object, the org).
    pub key: String,
    /// `pending`, `failed` (retrying), `dead` (terminal), or the kind's finished states.
    #[schema(example = "dead")]
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

/// The newest `limit` jobs of `spec`, of `status` if given.
pub async fn list(
    pg: &PgPool,
    spec: &Spec,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<ListedJob>, sqlx::Error> {
    let (key, created) = (at(spec.key, "q"), at(spec.created, "q"));
    sqlx::query_as(&format!(
        "SELECT $1::text AS kind, q.{id}::text AS id, {key} AS key, q.status, q.attempts, q.last_error,
                {created} AS created_at, q.next_attempt_at
           FROM {table} q
          WHERE ($2::text IS NULL OR q.status = $2)
          ORDER BY {created} DESC, q.{id} DESC
          LIMIT $3",
        id = spec.id,
        table = spec.table,
    ))
    .bind(spec.kind)
    .bind(status)
    .bind(limit)
    .fetch_all(pg)
    .await
}

/// Puts the failed or dead jobs of `spec` among `ids` back to `pending`, due now, with their attempts counted
/// from 0 again; returns the ids replayed (the others were not failed or dead, are being run right now, or do not
/// exist).
pub async fn replay(pg: &PgPool, spec: &Spec, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "UPDATE {table} SET status = 'pending', attempts = 0, next_attempt_at = now(),
                lease_token = NULL, lease_until = NULL
          WHERE {id}::text = ANY($1) AND status IN ('failed', 'dead')
            AND (lease_until IS NULL OR lease_until <= now())
         RETURNING {id}::text",
        id = spec.id,
        table = spec.table,
    ))
    .bind(ids)
    .fetch_all(pg)
    .await
}

// === the runner ===

/// A kind's worker: what one step of its loop does.
pub trait Worker: Send + Sync + 'static {
    /// The kind.
    fn spec(&self) -> &'static Spec;
    /// Claims the next due job and runs it: `Ok(true)` when there was one, `Ok(false)` when none is due. A job's
    /// own failure is recorded on it and is `Ok(true)`; `Err` is the queue itself failing (the database).
    fn step(&self) -> impl Future<Output = Result<bool, String>> + Send;
    /// Woken when a job is queued on this replica.
    fn wake(&self) -> &Notify;
    /// The database and the metrics, for the gauges.
    fn gauges(&self) -> (&PgPool, &QueueMetrics);
}

/// Runs `tasks` workers of one kind until `shutdown` turns true; a job under way is finished first.
pub async fn run<W: Worker>(worker: Arc<W>, tasks: usize, shutdown: watch::Receiver<bool>) {
    let handles: Vec<_> = (0..tasks.max(1))
        .map(|n| tokio::spawn(work(Arc::clone(&worker), n, shutdown.clone())))
        .collect();
    for handle in handles {
        let _ = handle.await;
    }
}

async fn work<W: Worker>(worker: Arc<W>, n: usize, mut shutdown: watch::Receiver<bool>) {
    let kind = worker.spec().kind;
    let mut failing = false;
    let mut gauges_at: Option<tokio::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if n == 0 && gauges_at.is_none_or(|t| t.elapsed() >= GAUGES_EVERY) {
            gauges_at = Some(tokio::time::Instant::now());
            let (pg, metrics) = worker.gauges();
            if let Err(e) = metrics.refresh(pg, worker.spec()).await {
                tracing::debug!(queue.kind = kind, error = %e, "could not read the queue's depth");
            }
        }
        let next = worker.step().await;
        if next.is_ok() && std::mem::take(&mut failing) {
            tracing::info!(queue.kind = kind, "queue worker recovered");
        }
        match next {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(queue.kind = kind, error = %e, "queue worker cannot reach the database; retrying");
                }
            }
        }
        tokio::select! {
            () = worker.wake().notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_to_the_cap() {
        let max = Duration::from_secs(300);
        let secs: Vec<u64> = (1..=10).map(|a| retry_delay(a, max).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(0, max).as_secs(), 2, "a first failure");
        assert_eq!(retry_delay(i32::MAX, max), max);
    }

    #[test]
    fn a_job_dies_at_the_last_attempt() {
        let policy = Policy {
            max_attempts: 3,
            max_delay: Duration::from_secs(60),
        };
        assert_eq!(after_failure(1, &policy).status, "failed");
        assert_eq!(after_failure(2, &policy).delay, Duration::from_secs(4));
        assert_eq!(after_failure(3, &policy).status, "dead");
        assert_eq!(after_failure(9, &policy).status, "dead");
    }

    #[test]
    fn the_claim_takes_only_heads_of_their_key() {
        static SPEC: Spec = Spec {
            kind: "test",
            table: "t",
            id: "id",
            key: "{a}.org_id::text",
            same_key: "{h}.org_id = {j}.org_id",
            seq: "{a}.id",
            created: "{a}.created_at",
            returning: "id",
        };
        let sql = claim_sql(&SPEC);
        assert!(sql.contains("h.org_id = j.org_id AND h.id < j.id"), "{sql}");
        assert!(sql.contains("FOR UPDATE SKIP LOCKED"), "{sql}");
        assert!(sql.contains("j.org_id::text = $3"), "{sql}");
    }
}
