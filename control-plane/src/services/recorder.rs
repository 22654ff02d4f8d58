//! 4.2's writes, committed together: the `usage/record` calls a process receives at the same time share one
//! transaction (group commit), so a busy counter's durable copy is written, and its row lock held through a commit,
//! once per batch instead of once per call.
//!
//! A batch, in one transaction:
//!
//! 1. insert every event, ordered by org and request id (two replicas' batches then take row locks in the same
//!    order and cannot deadlock), `ON CONFLICT DO NOTHING`;
//! 2. the Redis increments of the new events, in one pipeline (`counters::record_many`: at most once per request
//!    id, also across a batch that rolled back and is retried);
//! 3. the stored replies, and the counters' durable copies (one epoch-guarded upsert for the batch);
//! 4. commit.
//!
//! Events already stored (a repeat, or the same id from another replica) are answered from their stored reply once
//! the batch has committed, or refused with 409 when the metric or value differs. A failed batch answers each of its
//! calls with the failure; retrying them counts nothing twice.
//!
//! # Who guarantees exactly once
//!
//! The stored event (`usage_events`, unique per org and request id): a call whose id is stored never reaches
//! Redis. It is kept until its period stopped taking records (`services::usage::recordable`, purged by
//! `services::retention`), so a retry after the purge is refused, never counted. Redis's marker of the id decides
//! only for a batch that counted in Redis and then failed to commit: its retry inserts the event afresh and the
//! marker stops a second increment. So the marker lives as long as such a retry can be accepted (until the period's
//! retention ends), and is deleted once the event is committed, when it is no longer needed: Redis holds markers only
//! for failed batches.

use super::batch::{Batcher, Write};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use tollgate_common::domain::remaining;
use tollgate_common::store::counters::{self, CounterError, CounterKey, Snapshot};
use tollgate_common::store::redis::RedisConn;
use tollgate_common::store::{alerts, overage};

/// Most calls one batch takes.
pub const MAX_BATCH: usize = 256;
/// Batches in flight per process (they meet only on a shared counter's row, at the end of each).
pub const WORKERS: usize = 2;

/// One call to record.
pub struct Record {
    /// Which counter: the org, the metric and the period containing `occurred_at`.
    pub key: CounterKey,
    pub request_id: String,
    pub value: u64,
    pub occurred_at: DateTime<Utc>,
    /// The plan's limit of the metric, for `remaining`.
    pub limit: u64,
    /// The plan's terms, when the record falls in the current period: its usage alerts and the overage it owes
    /// are recorded in the batch's transaction, as the proxies' write-back records them.
    pub terms: Option<std::sync::Arc<RecordTerms>>,
}

/// What a record's usage means beyond the counter (see [`Record::terms`]).
#[derive(Debug, Clone)]
pub struct RecordTerms {
    /// The org's Clerk id (alert payloads name it).
    pub org: tollgate_common::domain::OrgId,
    pub included: u64,
    pub bound: tollgate_common::domain::Bound,
    pub thresholds: Vec<u16>,
    /// The plan's overage price of the metric, when the org is billed for overage.
    pub overage_price: Option<String>,
}

/// Why a call was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The request id was used before with another metric or value.
    #[error("request_id: was already used for a different metric or value")]
    Conflict,
    /// PostgreSQL or Redis failed; nothing was counted, and a retry counts once.
    #[error("usage could not be recorded: {0}")]
    Unavailable(String),
}

/// 4.2's reply; stored verbatim so a repeat gets identical bytes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedUsage {
    #[schema(value_type = String, example = "2026-11")]
    pub period_key: tollgate_common::domain::PeriodKey,
    pub used: u64,
    pub remaining: u64,
}

type Answer = Result<String, RecordError>;

/// The queue in front of the batch writers.
pub struct Recorder {
    batcher: Batcher<Writer>,
}

impl Recorder {
    /// Starts [`WORKERS`] batch writers on the current runtime. `remember` is how long after a period ends its
    /// records are still accepted (and a request id's marker must outlive a failed batch's retry).
    pub fn start(
        pg: PgPool,
        redis: RedisConn,
        namespace: String,
        remember: std::time::Duration,
    ) -> Self {
        let writer = Writer {
            pg,
            redis,
            namespace,
            remember,
        };
        Self {
            batcher: Batcher::start(writer, WORKERS, MAX_BATCH),
        }
    }

    /// Records one call (with whatever else arrives meanwhile); returns the reply body.
    pub async fn record(&self, record: Record) -> Answer {
        self.batcher.submit(record).await.unwrap_or_else(|_| {
            Err(RecordError::Unavailable(
                "the recorder has stopped".to_owned(),
            ))
        })
    }
}

struct Writer {
    pg: PgPool,
    redis: RedisConn,
    namespace: String,
    remember: std::time::Duration,
}

/// The calls of one batch with the same org and request id: the first is recorded, the others compared with it.
struct Group {
    lead: Record,
    /// Each call's place in the batch, metric and value.
    calls: Vec<(usize, String, u64)>,
}

impl Write for Writer {
    type Item = Record;
    type Reply = Answer;

    async fn write(&self, batch: Vec<Record>) -> Vec<Answer> {
        let calls = batch.len();
        let mut groups: Vec<Group> = Vec::with_capacity(calls);
        let mut index: HashMap<(i64, String), usize> = HashMap::new();
        for (at, record) in batch.into_iter().enumerate() {
            let id = (record.key.org_id, record.request_id.clone());
            let call = (at, record.key.metric.as_str().to_owned(), record.value);
            match index.get(&id) {
                Some(&i) => groups[i].calls.push(call),
                None => {
                    index.insert(id, groups.len());
                    groups.push(Group {
                        lead: record,
                        calls: vec![call],
                    });
                }
            }
        }
        groups.sort_by(|a, b| {
            (a.lead.key.org_id, &a.lead.request_id).cmp(&(b.lead.key.org_id, &b.lead.request_id))
        });
        let outcomes = match self.commit(&groups).await {
            Ok(fresh) => self.answers(&groups, fresh).await,
            Err(e) => {
                tracing::warn!(error = %e, calls = groups.len(), "a usage batch failed; its calls may be retried");
                Err(RecordError::Unavailable(e.to_string()))
            }
        };
        let mut answers: Vec<Option<Answer>> = vec![None; calls];
        for (i, group) in groups.into_iter().enumerate() {
            let lead_metric = group.lead.key.metric.as_str();
            let outcome = outcomes
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|o| o[i].clone());
            for (at, metric, value) in group.calls {
                answers[at] = Some(match &outcome {
                    Ok(_) if metric != lead_metric || value != group.lead.value => {
                        Err(RecordError::Conflict)
                    }
                    other => other.clone(),
                });
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(RecordError::Unavailable("unanswered".to_owned()))))
            .collect()
    }
}

impl Writer {
    /// Steps 1 to 4; returns the reply of each group whose event this batch stored.
    async fn commit(&self, groups: &[Group]) -> Result<HashMap<usize, String>, CounterError> {
        let mut tx = self.pg.begin().await?;
        let value = |r: &Record| i64::try_from(r.value).unwrap_or(i64::MAX);
        let inserted: Vec<(i64, String, i64)> = sqlx::query_as(
            "INSERT INTO usage_events (org_id, request_id, metric, value, period_key, occurred_at, period_end,
                                       response)
             SELECT o, r, m, v, p, t, e, '' FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                                        $5::text[], $6::timestamptz[], $7::timestamptz[])
                                                 AS u(o, r, m, v, p, t, e)
             ON CONFLICT (org_id, request_id) DO NOTHING RETURNING org_id, request_id, id",
        )
        .bind(groups.iter().map(|g| g.lead.key.org_id).collect::<Vec<_>>())
        .bind(groups.iter().map(|g| g.lead.request_id.as_str()).collect::<Vec<_>>())
        .bind(groups.iter().map(|g| g.lead.key.metric.as_str()).collect::<Vec<_>>())
        .bind(groups.iter().map(|g| value(&g.lead)).collect::<Vec<_>>())
        .bind(groups.iter().map(|g| g.lead.key.period.key().to_string()).collect::<Vec<_>>())
        .bind(groups.iter().map(|g| g.lead.occurred_at).collect::<Vec<_>>())
        .bind(groups.iter().map(|g| g.lead.key.period.end).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let stored: HashMap<(i64, &str), i64> = inserted
            .iter()
            .map(|(org, request, id)| ((*org, request.as_str()), *id))
            .collect();
        let mut redis = self.redis.clone();
        let mut fresh = HashMap::new();
        let (mut ids, mut bodies) = (Vec::new(), Vec::new());
        let mut latest: HashMap<(i64, &str, DateTime<Utc>), Snapshot> = HashMap::new();
        let mut terms: HashMap<(i64, &str, DateTime<Utc>), &std::sync::Arc<RecordTerms>> =
            HashMap::new();
        // The new events, in the batch's order; one Redis pipeline counts them all.
        let new: Vec<(usize, i64)> = groups
            .iter()
            .enumerate()
            .filter_map(|(i, group)| {
                let r = &group.lead;
                stored
                    .get(&(r.key.org_id, r.request_id.as_str()))
                    .map(|&id| (i, id))
            })
            .collect();
        let events: Vec<_> = new
            .iter()
            .map(|&(i, _)| {
                let r = &groups[i].lead;
                (&r.key, r.request_id.as_str(), r.value)
            })
            .collect();
        // On the transaction's connection: a second one from the pool while holding the first could exhaust the
        // pool under a burst.
        let counted =
            counters::record_many(&mut redis, &mut tx, &self.namespace, &events, self.remember)
                .await?;
        for (&(i, id), recorded) in new.iter().zip(counted) {
            let r = &groups[i].lead;
            let body = serde_json::to_string(&RecordedUsage {
                period_key: r.key.period.key(),
                used: recorded.used,
                remaining: remaining(recorded.used, r.limit),
            })
            .map_err(|_| CounterError::Protocol)?;
            if let Some(t) = &r.terms {
                terms.insert((r.key.org_id, r.key.metric.as_str(), r.key.period.start), t);
            }
            latest.insert(
                (r.key.org_id, r.key.metric.as_str(), r.key.period.start),
                Snapshot {
                    key: r.key.clone(),
                    used: recorded.used,
                    epoch: recorded.epoch,
                },
            );
            ids.push(id);
            bodies.push(body.clone());
            fresh.insert(i, body);
        }
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE usage_events e SET response = u.response
                   FROM UNNEST($1::bigint[], $2::text[]) AS u(id, response) WHERE e.id = u.id",
            )
            .bind(&ids)
            .bind(&bodies)
            .execute(&mut *tx)
            .await?;
            // The control plane runs no write-back: it writes the durable copy itself, under the same epoch rules.
            let snapshots: Vec<Snapshot> = latest.into_values().collect();
            counters::write(&mut *tx, &snapshots).await?;
            // The usage's alerts and overage, in the same transaction (what the proxies' write-back does for
            // proxied usage).
            let with_terms: Vec<(&Snapshot, &RecordTerms)> = snapshots
                .iter()
                .filter_map(|s| {
                    let t =
                        terms.get(&(s.key.org_id, s.key.metric.as_str(), s.key.period.start))?;
                    Some((s, t.as_ref()))
                })
                .collect();
            let observations: Vec<alerts::Observation<'_>> = with_terms
                .iter()
                .map(|(s, t)| alerts::Observation {
                    org_id: s.key.org_id,
                    org: &t.org,
                    metric: &s.key.metric,
                    period: s.key.period,
                    used: s.used,
                    included: t.included,
                    bound: t.bound,
                    thresholds: &t.thresholds,
                })
                .collect();
            alerts::record(&mut *tx, &observations).await?;
            let owed: Vec<overage::Owed<'_>> = with_terms
                .iter()
                .filter_map(|(s, t)| {
                    Some(overage::Owed {
                        org_id: s.key.org_id,
                        metric: &s.key.metric,
                        period: s.key.period,
                        price: t.overage_price.as_deref()?,
                        included: t.included,
                        bound: t.bound.units(),
                        used: s.used,
                    })
                })
                .collect();
            overage::observe(&mut *tx, &owed).await?;
        }
        tx.commit().await?;
        self.forget_markers(
            events
                .iter()
                .map(|(key, request_id, _)| ((*key).clone(), (*request_id).to_owned()))
                .collect(),
        );
        Ok(fresh)
    }

    /// Deletes the Redis markers of events just committed (see the module docs), off the reply's path. A failure
    /// leaves them to expire.
    fn forget_markers(&self, ids: Vec<(CounterKey, String)>) {
        if ids.is_empty() {
            return;
        }
        let mut redis = self.redis.clone();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let ids: Vec<(&CounterKey, &str)> = ids.iter().map(|(k, r)| (k, r.as_str())).collect();
            if let Err(e) = counters::forget_recorded(&mut redis, &namespace, &ids).await {
                tracing::debug!(error = %e, "recorded ids' markers not deleted; they expire");
            }
        });
    }

    /// Each group's answer: its fresh reply, or the stored one of an event recorded before.
    async fn answers(
        &self,
        groups: &[Group],
        mut fresh: HashMap<usize, String>,
    ) -> Result<Vec<Result<String, RecordError>>, RecordError> {
        let earlier: Vec<usize> = (0..groups.len())
            .filter(|i| !fresh.contains_key(i))
            .collect();
        let mut stored: HashMap<(i64, String), (String, i64, String)> = HashMap::new();
        if !earlier.is_empty() {
            let rows: Vec<(i64, String, String, i64, String)> = sqlx::query_as(
                "SELECT e.org_id, e.request_id, e.metric, e.value, e.response
                   FROM usage_events e JOIN UNNEST($1::bigint[], $2::text[]) AS u(o, r)
                     ON e.org_id = u.o AND e.request_id = u.r",
            )
            .bind(
                earlier
                    .iter()
                    .map(|&i| groups[i].lead.key.org_id)
                    .collect::<Vec<_>>(),
            )
            .bind(
                earlier
                    .iter()
                    .map(|&i| groups[i].lead.request_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&self.pg)
            .await
            .map_err(|e| RecordError::Unavailable(e.to_string()))?;
            for (org, request, metric, value, response) in rows {
                stored.insert((org, request), (metric, value, response));
            }
        }
        Ok(groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                if let Some(body) = fresh.remove(&i) {
                    return Ok(body);
                }
                let r = &g.lead;
                match stored.get(&(r.key.org_id, r.request_id.clone())) {
                    Some((metric, value, response))
                        if metric == r.key.metric.as_str()
                            && u64::try_from(*value).ok() == Some(r.value) =>
                    {
                        Ok(response.clone())
                    }
                    Some(_) => Err(RecordError::Conflict),
                    None => Err(RecordError::Unavailable(
                        "the stored event could not be read back".to_owned(),
                    )),
                }
            })
            .collect())
    }
}
