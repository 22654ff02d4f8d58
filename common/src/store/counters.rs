//! Usage counters: the live value in Redis, the durable copy in PostgreSQL.
//!
//! One counter per org, metric and billing period, stored as a Redis hash `{u: used, l: leased, e: epoch}` under
//! `<ns>:{o<org>}:c:<metric>:<periodKey>:<period start, Unix seconds>`. A period is identified by its start, not its
//! key: two periods can share a `periodKey` (a trial that ends in the month it began, and the period after it),
//! and each has its own counter, so a new period always starts at 0 without anything being reset. The `{o<org>}`
//! hash tag puts every counter of one org in one Redis Cluster slot.
//!
//! # Protocols
//!
//! * **Check and consume** is one Lua script, so it is atomic: it admits iff `used + leased + cost <= limit` and
//!   only then increments. A denied request consumes nothing. The control plane uses it as is.
//! * **Leasing** is how the proxy meets its throughput goal: a replica reserves a block of units (`l`, leased) in
//!   one round trip and then admits requests from it with a local decrement; it settles what it consumed (`l` to
//!   `u`) and returns what it did not use every few milliseconds and when idle or stopping. Grants are checked
//!   against `used + leased`, so nothing is ever over-admitted; blocks shrink to the request's cost near the limit,
//!   so the last units are handed out one request at a time.
//! * **A missing counter** (Redis restarted, key evicted, first use) is rebuilt from PostgreSQL before it is used:
//!   the script answers "missing", the caller reads the durable copy and calls again with it as the seed, and the
//!   script seeds only if the key is still absent. A Redis restart therefore never hands out a fresh quota; it can
//!   lose at most the increments made since the last write-back.
//! * **Write-back** reads absolute values from Redis and upserts them, guarded by `epoch`: a newer epoch always
//!   wins, and within an epoch only a larger value is written. Flushes are idempotent and may run on any number of
//!   replicas at once, in any order.
//! * **Reset** bumps the epoch in PostgreSQL first, then in Redis. A flush that read the counter before the reset
//!   carries the old epoch and is ignored, so a late flush can never undo a reset.

use crate::domain::{Metric, Period, PeriodKey};
use crate::store::redis::RedisConn;
use chrono::{DateTime, Utc};
use redis::Script;
use sqlx::{PgExecutor, PgPool};
use std::sync::LazyLock;

/// Lua numbers are doubles: limits above 2^53 would lose precision, and no real quota gets near it.
pub const MAX_LIMIT: u64 = 1 << 53;
/// Counters stay in Redis this long after their period ends (history reads), then expire; PostgreSQL keeps them.
const RETAIN_AFTER_PERIOD_SECS: i64 = 40 * 24 * 3600;

/// Exact check and consume, one step: admits iff `u + l + cost <= limit` (`l`: units leased to proxies and not
/// yet consumed or returned), and only then adds `cost` to `u`. A counter is live once it has an epoch field; a
/// missing one answers `-1` and the caller calls again with the durable copy as the seed.
static CONSUME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/expire.lua"),
        include_str!("lua/consume.lua")
    ))
});

// The scripts live in `lua/`, beside this file, and are built in. `apply_report.lua`, shared by `LEASE` and
// `SETTLE`, applies a replica's report. Reports are absolute — the replica's total consumption in this epoch
// (`c:<rid>`), its total refunds (`r:<rid>`: units given back for requests the upstream never answered) and what it
// holds now (`h:<rid>`) — so a call whose reply was lost can be repeated, or superseded by the next report, without
// counting anything twice or leaking a lease. Both totals only grow, so a stale report can never move the counter
// backwards. `seed.lua` rebuilds a missing counter from the durable copy passed after the other arguments.
// `expire.lua`, part of every script that writes, is why no script leaves a key without an expiry.

/// A proxy's round trip: applies its report (it hands back everything it held), then admits `cost` and grants a
/// block if `u + l + cost <= limit`. Before refusing, holdings of replicas silent for 30 s (crashed) are reclaimed.
/// ARGV: the report (7, see `apply_report.lua`; held is 0), cost, want, limit, [seed used, seed epoch, expire-at].
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        "local seed_at = 11\n",
        include_str!("lua/expire.lua"),
        include_str!("lua/seed.lua"),
        include_str!("lua/apply_report.lua"),
        include_str!("lua/lease.lua"),
    ))
});

/// The background half of leasing: applies a replica's report (consumption, and what it still holds).
/// ARGV: the report (7, see `apply_report.lua`), [seed used, seed epoch, expire-at].
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        "local seed_at = 8\n",
        include_str!("lua/expire.lua"),
        include_str!("lua/seed.lua"),
        include_str!("lua/apply_report.lua"),
        include_str!("lua/settle.lua"),
    ))
});

static RESET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/expire.lua"),
        include_str!("lua/reset.lua")
    ))
});

static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/expire.lua"),
        include_str!("lua/record.lua")
    ))
});

/// The pub/sub channel on which resets are announced (see [`ResetAnnouncement`]), so proxies drop the leases a
/// reset voided without waiting for their next round trip.
pub fn resets_channel(namespace: &str) -> String {
    format!("{namespace}:counters:reset")
}

/// What a reset announcement says: which period's counters were reset, of one org (internal id) or of all.
/// On the wire: `<periodKey>` or `<periodKey> <org id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetAnnouncement {
    /// The period whose counters were reset.
    pub period: PeriodKey,
    /// The org, or `None` for every org.
    pub org_id: Option<i64>,
}

impl ResetAnnouncement {
    /// The message to publish.
    pub fn payload(&self) -> String {
        match self.org_id {
            Some(id) => format!("{} {id}", self.period),
            None => self.period.to_string(),
        }
    }

    /// Reads a published message; `None` when it is not one.
    pub fn parse(payload: &str) -> Option<Self> {
        let (period, org_id) = match payload.trim().split_once(' ') {
            Some((period, id)) => (period, Some(id.trim().parse().ok()?)),
            None => (payload.trim(), None),
        };
        Some(Self {
            period: PeriodKey::parse(period).ok()?,
            org_id,
        })
    }
}

/// The Redis key of a counter.
pub fn redis_key(namespace: &str, org_id: i64, metric: &Metric, period: &Period) -> String {
    format!(
        "{namespace}:{{o{org_id}}}:c:{metric}:{}:{}",
        period.key(),
        period.start.timestamp()
    )
}

/// One counter: an org's usage of a metric in a period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// Internal org id.
    pub org_id: i64,
    /// The metric.
    pub metric: Metric,
    /// The billing period.
    pub period: Period,
}

impl CounterKey {
    /// Its Redis key.
    pub fn redis_key(&self, namespace: &str) -> String {
        redis_key(namespace, self.org_id, &self.metric, &self.period)
    }

    fn expire_at(&self) -> i64 {
        self.period.end.timestamp() + RETAIN_AFTER_PERIOD_SECS
    }
}

/// A counter as the scripts' callers hold it: which counter, and its Redis key, formatted once. The scripts take
/// this one handle, so the key they run on and the counter a missing one is rebuilt from cannot disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    key: CounterKey,
    redis_key: String,
}

impl Counter {
    /// The counter `key` in `namespace`.
    pub fn new(namespace: &str, key: CounterKey) -> Self {
        Self {
            redis_key: key.redis_key(namespace),
            key,
        }
    }

    /// Which counter.
    pub fn key(&self) -> &CounterKey {
        &self.key
    }

    /// Its Redis key.
    pub fn redis_key(&self) -> &str {
        &self.redis_key
    }
}

/// What a check-and-consume decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed {
    /// Whether the cost was admitted (and consumed).
    pub allowed: bool,
    /// Units consumed, after the call.
    pub used: u64,
    /// Units leased to proxies and not yet consumed or returned.
    pub leased: u64,
}

/// What a lease call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    /// Whether this request's cost was admitted (it is part of `granted`).
    pub admitted: bool,
    /// Units granted to the caller (a multiple of the cost, at least the cost when admitted).
    pub granted: u64,
    /// Units consumed, after settling.
    pub used: u64,
    /// Units leased out in total, after this grant.
    pub leased: u64,
    /// The counter's epoch.
    pub epoch: i64,
}

/// What a proxy reports on a lease or settle call. Absolute values, so a repeated report changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// The epoch the replica's lease belongs to (`-1`: none yet).
    pub epoch: i64,
    /// Units the replica consumed from its leases in that epoch, in total.
    pub consumed: u64,
    /// Units it holds now (not consumed).
    pub held: u64,
    /// `consumed` as of the last report Redis acknowledged (what the counter already contains).
    pub acknowledged: u64,
    /// Units given back in that epoch, in total (requests admitted but never answered by the upstream).
    pub refunded: u64,
    /// `refunded` as of the last report Redis acknowledged.
    pub refunds_acknowledged: u64,
}

impl Report {
    fn args(&self, invocation: &mut redis::ScriptInvocation<'_>, replica: &str) {
        invocation
            .arg(replica)
            .arg(self.epoch)
            .arg(self.consumed)
            .arg(self.held)
            .arg(self.acknowledged)
            .arg(self.refunded)
            .arg(self.refunds_acknowledged);
    }
}

/// A failure of either store.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL failed or is unreachable.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// Redis answered something the script never returns.
    #[error("unexpected reply from the quota script")]
    Protocol,
}

/// The durable copy of a counter, as stored in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    /// Units used.
    pub used: u64,
    /// Reset generation.
    pub epoch: u64,
}

/// Reads the durable copy (zero when never written).
pub async fn load<'e>(pg: impl PgExecutor<'e>, key: &CounterKey) -> Result<Durable, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT used, epoch FROM usage_counters WHERE org_id = $1 AND metric = $2 AND period_start = $3",
    )
    .bind(key.org_id)
    .bind(key.metric.as_str())
    .bind(key.period.start)
    .fetch_optional(pg)
    .await?;
    Ok(row.map_or_else(Durable::default, |(used, epoch)| Durable {
        used: u64::try_from(used).unwrap_or(0),
        epoch: u64::try_from(epoch).unwrap_or(0),
    }))
}

/// Invokes a counter script; when it answers `-1` (the counter is missing from Redis), reads the durable copy and
/// invokes it again with that copy as the seed. `call` builds the invocation, with or without the seed.
async fn invoke_seeded<'s, 'e, F>(
    conn: &mut RedisConn,
    pg: impl PgExecutor<'e>,
    key: &CounterKey,
    call: F,
) -> Result<Vec<i64>, CounterError>
where
    F: Fn(Option<Durable>) -> redis::ScriptInvocation<'s>,
{
    let reply: Vec<i64> = call(None).invoke_async(conn).await?;
    if reply.first() != Some(&-1) {
        return Ok(reply);
    }
    let durable = load(pg, key).await?;
    Ok(call(Some(durable)).invoke_async(conn).await?)
}

/// Checks and consumes `cost` against `limit` atomically, in one step (counting units leased to proxies as
/// taken). A missing counter is first rebuilt from PostgreSQL.
pub async fn consume(
    conn: &mut RedisConn,
    pg: &PgPool,
    counter: &Counter,
    cost: u64,
    limit: u64,
) -> Result<Consumed, CounterError> {
    let limit = limit.min(MAX_LIMIT);
    let key = counter.key();
    let reply = invoke_seeded(conn, pg, key, |seed| {
        let mut inv = CONSUME.key(counter.redis_key());
        inv.arg(cost).arg(limit);
        if let Some(d) = seed {
            inv.arg(d.used).arg(d.epoch).arg(key.expire_at());
        }
        inv
    })
    .await?;
    match reply.as_slice() {
        [allowed @ (0 | 1), used, leased] => Ok(Consumed {
            allowed: *allowed == 1,
            used: u64::try_from(*used).unwrap_or(0),
            leased: u64::try_from(*leased).unwrap_or(0),
        }),
        _ => Err(CounterError::Protocol),
    }
}

/// A proxy's lease round trip (see `LEASE`): applies `report` (which hands back what the replica held), then
/// admits `cost` and grants up to `want` units (a multiple of `cost`) if `used + leased + cost <= limit`. A missing
/// counter is first rebuilt from PostgreSQL.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per script parameter"
)]
pub async fn lease(
    conn: &mut RedisConn,
    pg: &PgPool,
    counter: &Counter,
    replica: &str,
    report: Report,
    cost: u64,
    want: u64,
    limit: u64,
) -> Result<Leased, CounterError> {
    let limit = limit.min(MAX_LIMIT);
    let key = counter.key();
    let reply = invoke_seeded(conn, pg, key, |seed| {
        let mut inv = LEASE.key(counter.redis_key());
        report.args(&mut inv, replica);
        inv.arg(cost).arg(want).arg(limit);
        if let Some(d) = seed {
            inv.arg(d.used).arg(d.epoch).arg(key.expire_at());
        }
        inv
    })
    .await?;
    match reply.as_slice() {
        [admitted @ (0 | 1), granted, used, leased, epoch] => Ok(Leased {
            admitted: *admitted == 1,
            granted: u64::try_from(*granted).unwrap_or(0),
            used: u64::try_from(*used).unwrap_or(0),
            leased: u64::try_from(*leased).unwrap_or(0),
            epoch: *epoch,
        }),
        _ => Err(CounterError::Protocol),
    }
}

/// [`pipelined`] for calls of `script`, loading it only when Redis answers that it does not know it (its first use
/// since Redis started or flushed its scripts), not before every pipeline. Running the pipeline again is safe: the
/// scripts used this way are idempotent (a settle report is absolute, a record is marked by its request id), so a
/// call that did run the first time changes nothing the second.
async fn pipelined_script<T: redis::FromRedisValue>(
    conn: &mut RedisConn,
    script: &Script,
    orgs: &[i64],
    add: impl Fn(&mut redis::Pipeline, usize),
) -> Result<Vec<T>, CounterError> {
    match pipelined(conn, orgs, &add).await {
        Err(CounterError::Redis(e))
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            script.prepare_invoke().load_async(conn).await?;
            pipelined(conn, orgs, &add).await
        }
        result => result,
    }
}

/// Runs one command per item in pipelines Redis Cluster accepts: a single pipeline on one node, one per org (one
/// hash slot, thanks to the `{o<org>}` tag) on a cluster. Replies come back in item order.
async fn pipelined<T: redis::FromRedisValue>(
    conn: &mut RedisConn,
    orgs: &[i64],
    add: impl Fn(&mut redis::Pipeline, usize),
) -> Result<Vec<T>, CounterError> {
    let groups: Vec<Vec<usize>> = if conn.is_cluster() {
        let mut by_org: std::collections::BTreeMap<i64, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, org) in orgs.iter().enumerate() {
            by_org.entry(*org).or_default().push(i);
        }
        by_org.into_values().collect()
    } else {
        vec![(0..orgs.len()).collect()]
    };
    let mut out: Vec<Option<T>> = (0..orgs.len()).map(|_| None).collect();
    for group in groups {
        let mut pipe = redis::pipe();
        for &i in &group {
            add(&mut pipe, i);
        }
        let replies: Vec<T> = pipe.query_async(conn).await?;
        for (i, reply) in group.into_iter().zip(replies) {
            out[i] = Some(reply);
        }
    }
    out.into_iter()
        .map(|r| r.ok_or(CounterError::Protocol))
        .collect()
}

/// Applies one replica's reports on many counters in one pipeline (see `SETTLE`). Returns, per entry, whether the
/// report applied (`false`: the counter's epoch moved, the replica's lease is void) and the counter's epoch. Counters
/// missing from Redis are rebuilt from PostgreSQL first.
pub async fn settle(
    conn: &mut RedisConn,
    pg: &PgPool,
    replica: &str,
    entries: &[(&Counter, Report)],
) -> Result<Vec<(bool, i64)>, CounterError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let orgs: Vec<i64> = entries.iter().map(|(c, _)| c.key().org_id).collect();
    let replies: Vec<Vec<i64>> = pipelined_script(conn, &SETTLE, &orgs, |pipe, i| {
        let (counter, r) = &entries[i];
        let mut inv = SETTLE.key(counter.redis_key());
        r.args(&mut inv, replica);
        pipe.invoke_script(&inv);
    })
    .await?;
    let mut out = Vec::with_capacity(entries.len());
    for ((counter, r), mut reply) in entries.iter().zip(replies) {
        if reply.first() == Some(&-1) {
            let key = counter.key();
            let d = load(pg, key).await?;
            let mut inv = SETTLE.key(counter.redis_key());
            r.args(&mut inv, replica);
            reply = inv
                .arg(d.used)
                .arg(d.epoch)
                .arg(key.expire_at())
                .invoke_async(conn)
                .await?;
        }
        match reply.as_slice() {
            [applied @ (0 | 1), _, _, epoch] => out.push((*applied == 1, *epoch)),
            _ => return Err(CounterError::Protocol),
        }
    }
    Ok(out)
}

/// A counter's live state without changing its value: units consumed and units leased to proxies. A counter
/// missing from Redis is first rebuilt there from the durable copy, as its first consumer would, so that reads of an
/// org that consumes nothing cost one PostgreSQL query, not one per read.
pub async fn live(
    conn: &mut RedisConn,
    pg: &PgPool,
    namespace: &str,
    key: &CounterKey,
) -> Result<(u64, u64), CounterError> {
    let redis_key = key.redis_key(namespace);
    let (used, leased, epoch): (Option<u64>, Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(&redis_key)
        .arg("u")
        .arg("l")
        .arg("e")
        .query_async(conn)
        .await?;
    match (used, epoch) {
        (Some(used), Some(_)) => Ok((used, leased.unwrap_or(0))),
        _ => {
            let counter = Counter {
                key: key.clone(),
                redis_key,
            };
            let seeded = consume(conn, pg, &counter, 0, MAX_LIMIT).await?;
            Ok((seeded.used, seeded.leased))
        }
    }
}

/// Units consumed (see [`live`]).
pub async fn current(
    conn: &mut RedisConn,
    pg: &PgPool,
    namespace: &str,
    key: &CounterKey,
) -> Result<u64, CounterError> {
    Ok(live(conn, pg, namespace, key).await?.0)
}

/// A counter's live value as read from Redis, ready to be written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Which counter.
    pub key: CounterKey,
    /// Units used.
    pub used: u64,
    /// Reset generation the value belongs to.
    pub epoch: u64,
}

/// Reads the live values of `keys` in one pipeline. Counters missing from Redis are left out (PostgreSQL already
/// holds their last state).
pub async fn snapshot(
    conn: &mut RedisConn,
    namespace: &str,
    keys: &[CounterKey],
) -> Result<Vec<Snapshot>, CounterError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let orgs: Vec<i64> = keys.iter().map(|key| key.org_id).collect();
    let values: Vec<(Option<u64>, Option<u64>)> = pipelined(conn, &orgs, |pipe, i| {
        pipe.cmd("HMGET")
            .arg(keys[i].redis_key(namespace))
            .arg("u")
            .arg("e");
    })
    .await?;
    Ok(keys
        .iter()
        .zip(values)
        .filter_map(|(key, (used, epoch))| {
            Some(Snapshot {
                key: key.clone(),
                used: used?,
                epoch: epoch.unwrap_or(0),
            })
        })
        .collect())
}

/// Writes snapshots to PostgreSQL in one statement: a newer epoch always wins, and within an epoch only a larger
/// value is written, so stale or repeated snapshots change nothing. Returns how many rows changed.
pub async fn write<'e>(
    pg: impl PgExecutor<'e>,
    snapshots: &[Snapshot],
) -> Result<u64, sqlx::Error> {
    if snapshots.is_empty() {
        return Ok(0);
    }
    let mut rows = Rows::default();
    for s in snapshots {
        rows.push(s);
    }
    let written = sqlx::query(
        "INSERT INTO usage_counters AS c (org_id, metric, period_key, period_start, period_end, used, epoch)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                              $6::bigint[], $7::bigint[])
         ON CONFLICT (org_id, metric, period_start) DO UPDATE
            SET used = EXCLUDED.used, epoch = EXCLUDED.epoch, updated_at = now()
          WHERE c.epoch < EXCLUDED.epoch OR (c.epoch = EXCLUDED.epoch AND c.used < EXCLUDED.used)",
    )
    .bind(&rows.org_id)
    .bind(&rows.metric)
    .bind(&rows.period_key)
    .bind(&rows.start)
    .bind(&rows.end)
    .bind(&rows.used)
    .bind(&rows.epoch)
    .execute(pg)
    .await?
    .rows_affected();
    Ok(written)
}

/// Write-back of `keys`: [`snapshot()`] then [`write()`]. Returns how many rows changed.
pub async fn flush(
    conn: &mut RedisConn,
    pg: &PgPool,
    namespace: &str,
    keys: &[CounterKey],
) -> Result<u64, CounterError> {
    let snapshots = snapshot(conn, namespace, keys).await?;
    Ok(write(pg, &snapshots).await?)
}

#[derive(Default)]
struct Rows {
    org_id: Vec<i64>,
    metric: Vec<String>,
    period_key: Vec<String>,
    start: Vec<DateTime<Utc>>,
    end: Vec<DateTime<Utc>>,
    used: Vec<i64>,
    epoch: Vec<i64>,
}

impl Rows {
    fn push(&mut self, s: &Snapshot) {
        self.org_id.push(s.key.org_id);
        self.metric.push(s.key.metric.as_str().to_owned());
        self.period_key.push(s.key.period.key().to_string());
        self.start.push(s.key.period.start);
        self.end.push(s.key.period.end);
        self.used.push(i64::try_from(s.used).unwrap_or(i64::MAX));
        self.epoch.push(i64::try_from(s.epoch).unwrap_or(i64::MAX));
    }
}

/// Resets one counter to zero under a new epoch: PostgreSQL first, then Redis (see the module docs).
pub async fn reset(
    conn: &mut RedisConn,
    pg: &PgPool,
    namespace: &str,
    key: &CounterKey,
) -> Result<u64, CounterError> {
    reset_many(conn, pg, namespace, std::slice::from_ref(key)).await?;
    Ok(load(pg, key).await?.epoch)
}

/// The outcome of [`record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The counter after the call.
    pub used: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Whether this call added the value (`false`: the request id was already recorded).
    pub fresh: bool,
}

/// Adds `value` unconditionally (accounting, not admission), at most once per `request_id`: the script records the
/// id beside the counter (same hash slot) and adds only if it was new, so a retried call never counts twice.
///
/// The id's marker is kept until `remember` after the counter's period ends: as long as the caller still accepts
/// records of that period, so a retry of a call whose database write failed after this counted it (the only case
/// the marker decides; see `control-plane::services::recorder`) is never counted again. Both keys expire.
pub async fn record<'e>(
    conn: &mut RedisConn,
    pg: impl PgExecutor<'e>,
    namespace: &str,
    key: &CounterKey,
    request_id: &str,
    value: u64,
    remember: std::time::Duration,
) -> Result<Recorded, CounterError> {
    let counter = key.redis_key(namespace);
    let marker = record_marker(namespace, key, request_id);
    let reply = invoke_seeded(conn, pg, key, |seed| {
        record_invocation(&counter, &marker, value, seed, key, remember)
    })
    .await?;
    recorded(&reply)
}

/// Records many usage events (each as [`record`] does) in one pipeline per hash slot, in order; the events whose
/// counter is missing from Redis are then recorded one by one, rebuilding it from PostgreSQL.
pub async fn record_many(
    conn: &mut RedisConn,
    pg: &mut sqlx::PgConnection,
    namespace: &str,
    events: &[(&CounterKey, &str, u64)],
    remember: std::time::Duration,
) -> Result<Vec<Recorded>, CounterError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<(String, String)> = events
        .iter()
        .map(|(key, request_id, _)| {
            (
                key.redis_key(namespace),
                record_marker(namespace, key, request_id),
            )
        })
        .collect();
    let orgs: Vec<i64> = events.iter().map(|(key, _, _)| key.org_id).collect();
    let replies: Vec<Vec<i64>> = pipelined_script(conn, &RECORD, &orgs, |pipe, i| {
        let (counter, marker) = &names[i];
        pipe.invoke_script(&record_invocation(
            counter,
            marker,
            events[i].2,
            None,
            events[i].0,
            remember,
        ));
    })
    .await?;
    let mut out = Vec::with_capacity(events.len());
    for ((key, request_id, value), reply) in events.iter().zip(replies) {
        out.push(if reply.first() == Some(&-1) {
            record(conn, &mut *pg, namespace, key, request_id, *value, remember).await?
        } else {
            recorded(&reply)?
        });
    }
    Ok(out)
}

/// The Redis key remembering that `request_id` was counted (by its SHA-256: request ids are the caller's).
pub fn record_marker(namespace: &str, key: &CounterKey, request_id: &str) -> String {
    use sha2::Digest;
    format!(
        "{namespace}:{{o{}}}:r:{}",
        key.org_id,
        hex::encode(sha2::Sha256::digest(request_id.as_bytes()))
    )
}

/// Forgets the markers of request ids whose events PostgreSQL now holds (its unique index counts them once from
/// then on), so Redis keeps markers only for calls that failed after counting. One pipeline per hash slot.
pub async fn forget_recorded(
    conn: &mut RedisConn,
    namespace: &str,
    ids: &[(&CounterKey, &str)],
) -> Result<(), CounterError> {
    if ids.is_empty() {
        return Ok(());
    }
    let orgs: Vec<i64> = ids.iter().map(|(key, _)| key.org_id).collect();
    let _: Vec<i64> = pipelined(conn, &orgs, |pipe, i| {
        let (key, request_id) = ids[i];
        pipe.cmd("UNLINK")
            .arg(record_marker(namespace, key, request_id));
    })
    .await?;
    Ok(())
}

/// When a recorded id's marker expires: `remember` after the counter's period ends.
fn marker_expire_at(key: &CounterKey, remember: std::time::Duration) -> i64 {
    let remember = i64::try_from(remember.as_secs()).unwrap_or(i64::MAX);
    key.period.end.timestamp().saturating_add(remember)
}

fn record_invocation<'s>(
    counter: &str,
    marker: &str,
    value: u64,
    seed: Option<Durable>,
    key: &CounterKey,
    remember: std::time::Duration,
) -> redis::ScriptInvocation<'s> {
    let mut invocation = RECORD.key(counter);
    invocation.key(marker).arg(value);
    match seed {
        Some(d) => invocation.arg(d.used).arg(d.epoch),
        None => invocation.arg("").arg(0),
    };
    invocation
        .arg(key.expire_at())
        .arg(marker_expire_at(key, remember));
    invocation
}

fn recorded(reply: &[i64]) -> Result<Recorded, CounterError> {
    match reply {
        [1, used, epoch, fresh] => Ok(Recorded {
            used: u64::try_from(*used).unwrap_or(0),
            epoch: u64::try_from(*epoch).unwrap_or(0),
            fresh: *fresh == 1,
        }),
        _ => Err(CounterError::Protocol),
    }
}

/// Makes sure the counter exists (in PostgreSQL, and live in Redis, rebuilt from PostgreSQL if missing) without
/// changing it; returns its value.
pub async fn ensure(
    conn: &mut RedisConn,
    pg: &PgPool,
    namespace: &str,
    key: &CounterKey,
) -> Result<u64, CounterError> {
    sqlx::query(
        "INSERT INTO usage_counters (org_id, metric, period_key, period_start, period_end)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, metric, period_start) DO NOTHING",
    )
    .bind(key.org_id)
    .bind(key.metric.as_str())
    .bind(key.period.key().to_string())
    .bind(key.period.start)
    .bind(key.period.end)
    .execute(pg)
    .await?;
    let counter = Counter::new(namespace, key.clone());
    Ok(consume(conn, pg, &counter, 0, MAX_LIMIT).await?.used)
}

/// Resets many counters (see the module docs): one PostgreSQL transaction, then one Redis pipeline. Returns how
/// many of them had any usage before. Repeating the call leaves them at zero (and returns 0).
pub async fn reset_many(
    conn: &mut RedisConn,
    pg: &PgPool,
    namespace: &str,
    keys: &[CounterKey],
) -> Result<u64, CounterError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let mut rows = Rows::default();
    for key in keys {
        rows.push(&Snapshot {
            key: key.clone(),
            used: 0,
            epoch: 1,
        });
    }
    let mut tx = pg.begin().await?;
    let before: Vec<(i64, String, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT c.org_id, c.metric, c.period_start, c.used FROM usage_counters c
           JOIN UNNEST($1::bigint[], $2::text[], $3::timestamptz[]) AS k(org_id, metric, period_start)
             ON (c.org_id, c.metric, c.period_start) = (k.org_id, k.metric, k.period_start)
          FOR UPDATE OF c",
    )
    .bind(&rows.org_id)
    .bind(&rows.metric)
    .bind(&rows.start)
    .fetch_all(&mut *tx)
    .await?;
    let epochs: Vec<(i64, String, DateTime<Utc>, i64)> = sqlx::query_as(
        "INSERT INTO usage_counters AS c (org_id, metric, period_key, period_start, period_end, used, epoch)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                              $6::bigint[], $7::bigint[])
         ON CONFLICT (org_id, metric, period_start) DO UPDATE
            SET used = 0, epoch = c.epoch + 1, updated_at = now()
         RETURNING c.org_id, c.metric, c.period_start, c.epoch",
    )
    .bind(&rows.org_id)
    .bind(&rows.metric)
    .bind(&rows.period_key)
    .bind(&rows.start)
    .bind(&rows.end)
    .bind(&rows.used)
    .bind(&rows.epoch)
    .fetch_all(&mut *tx)
    .await?;
    // A reset re-arms the counters' usage alerts, in the same transaction.
    crate::store::alerts::rearm(&mut *tx, &rows.org_id, &rows.metric, &rows.start).await?;
    tx.commit().await?;

    let epoch_of: std::collections::HashMap<(i64, &str, i64), i64> = epochs
        .iter()
        .map(|(o, m, start, e)| ((*o, m.as_str(), start.timestamp()), *e))
        .collect();
    let mut had_usage: std::collections::HashSet<(i64, &str, i64)> = before
        .iter()
        .filter(|(_, _, _, used)| *used > 0)
        .map(|(o, m, start, _)| (*o, m.as_str(), start.timestamp()))
        .collect();
    // Pipelined EVALSHA cannot fall back to EVAL on NOSCRIPT: make sure the script is loaded first.
    RESET.prepare_invoke().load_async(conn).await?;
    let orgs: Vec<i64> = keys.iter().map(|key| key.org_id).collect();
    let previous: Vec<i64> = pipelined(conn, &orgs, |pipe, i| {
        let key = &keys[i];
        let epoch = epoch_of
            .get(&(
                key.org_id,
                key.metric.as_str(),
                key.period.start.timestamp(),
            ))
            .copied()
            .unwrap_or(1);
        pipe.invoke_script(
            RESET
                .key(key.redis_key(namespace))
                .arg(epoch)
                .arg(key.expire_at()),
        );
    })
    .await?;
    for (key, prev) in keys.iter().zip(previous) {
        if prev > 0 {
            had_usage.insert((
                key.org_id,
                key.metric.as_str(),
                key.period.start.timestamp(),
            ));
        }
    }
    Ok(had_usage.len() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reset_announcement_reads_back_as_written() {
        let period = PeriodKey::parse("2026-12").expect("period");
        for a in [
            ResetAnnouncement {
                period,
                org_id: None,
            },
            ResetAnnouncement {
                period,
                org_id: Some(42),
            },
        ] {
            assert_eq!(ResetAnnouncement::parse(&a.payload()), Some(a));
        }
        assert_eq!(ResetAnnouncement::parse("2026-12 x"), None, "not an org id");
        assert_eq!(ResetAnnouncement::parse("soon"), None, "not a period");
    }

    use super::*;

    fn month(y: i32, m: u32) -> Period {
        use chrono::TimeZone;
        Period::calendar_month(Utc.with_ymd_and_hms(y, m, 2, 0, 0, 0).single().unwrap())
    }

    #[test]
    fn keys_share_one_cluster_slot_per_org() {
        let metric = Metric::parse("api_call").unwrap();
        let period = month(2026, 11);
        assert_eq!(
            redis_key("tg", 42, &metric, &period),
            "tg:{o42}:c:api_call:2026-11:1793491200"
        );
        let tokens = Metric::parse("tokens").unwrap();
        let a = redis_key("tg", 42, &metric, &period);
        let b = redis_key("tg", 42, &tokens, &month(2027, 1));
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&a), "{o42}");
        assert_eq!(tag(&a), tag(&b), "one hash tag, one slot");
    }

    #[test]
    fn a_recorded_id_is_remembered_until_its_period_stops_taking_records() {
        let period = month(2026, 11);
        let key = CounterKey {
            org_id: 42,
            metric: Metric::parse("api_call").unwrap(),
            period,
        };
        let remember = std::time::Duration::from_secs(36 * 86_400);
        assert_eq!(
            marker_expire_at(&key, remember),
            period.end.timestamp() + 36 * 86_400
        );
        assert_eq!(
            record_marker("tg", &key, "req-1"),
            "tg:{o42}:r:9456bdfa12ea76959c94a3572f5d91c73d838622df0a8d9b4e815c276c6b7880",
            "the id's SHA-256, in the org's slot"
        );
    }

    #[test]
    fn periods_sharing_a_key_are_different_counters() {
        use chrono::TimeZone;
        let at = |d| {
            Utc.with_ymd_and_hms(2026, 12, d, 10, 0, 0)
                .single()
                .unwrap()
        };
        let metric = Metric::parse("api_call").unwrap();
        let trial = Period {
            start: at(1),
            end: at(15),
        };
        let paid = Period {
            start: at(15),
            end: Utc
                .with_ymd_and_hms(2027, 1, 15, 10, 0, 0)
                .single()
                .unwrap(),
        };
        assert_eq!(trial.key(), paid.key());
        assert_ne!(
            redis_key("tg", 1, &metric, &trial),
            redis_key("tg", 1, &metric, &paid)
        );
    }
}
