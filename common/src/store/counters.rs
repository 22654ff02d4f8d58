//! Usage counters: the live value in Redis, the durable copy in PostgreSQL.
//!
//! One counter per org, metric and billing period, stored as a Redis hash `{u: used, e: epoch}` under
//! `<ns>:{o<org>}:c:<metric>:<periodKey>`. The `{o<org>}` hash tag puts every counter of one org in one Redis
//! Cluster slot.
//!
//! # Protocols
//!
//! * **Check and consume** is one Lua script, so it is atomic and costs one round trip: it admits iff
//!   `used + cost <= limit` and only then increments. A denied request consumes nothing.
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

/// Check and consume. The allow path is one `HINCRBY` (Redis CPU is what metering costs on a small box); a denial
/// takes the increment back inside the same script, so no one ever observes it. A counter is "live" once it has an
/// epoch field: an increment that finds none created the key, is undone, and the caller is told to seed it.
static CONSUME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cost = tonumber(ARGV[1])
local used = redis.call('HINCRBY', KEYS[1], 'u', cost)
if used == cost and redis.call('HEXISTS', KEYS[1], 'e') == 0 then
  if ARGV[3] == nil then
    redis.call('DEL', KEYS[1])
    return {-1, 0}
  end
  redis.call('HSET', KEYS[1], 'u', ARGV[3], 'e', ARGV[4])
  redis.call('EXPIREAT', KEYS[1], ARGV[5])
  used = redis.call('HINCRBY', KEYS[1], 'u', cost)
end
if cost > 0 and used > tonumber(ARGV[2]) then
  return {0, redis.call('HINCRBY', KEYS[1], 'u', -cost)}
end
return {1, used}
",
    )
});

static RESET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local prev = redis.call('HMGET', KEYS[1], 'u', 'e')
if prev[2] and tonumber(prev[2]) >= tonumber(ARGV[1]) then return -2 end
redis.call('HSET', KEYS[1], 'u', 0, 'e', ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
if prev[1] then return tonumber(prev[1]) end
return -1
",
    )
});

static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local used = redis.call('HGET', KEYS[1], 'u')
if not used then
  if ARGV[2] == '' then return {-1, 0, 0, 0} end
  redis.call('HSET', KEYS[1], 'u', ARGV[2], 'e', ARGV[3])
  redis.call('EXPIREAT', KEYS[1], ARGV[4])
end
local fresh = redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[5])
if fresh then redis.call('HINCRBY', KEYS[1], 'u', ARGV[1]) end
local now = redis.call('HMGET', KEYS[1], 'u', 'e')
return {1, tonumber(now[1]), tonumber(now[2] or 0), fresh and 1 or 0}
",
    )
});

/// How long Redis remembers a recorded `request_id` (PostgreSQL's unique index remembers it for good).
const RECORD_MARKER_TTL_SECS: u64 = 7 * 24 * 3600;

/// The Redis key of a counter.
pub fn redis_key(namespace: &str, org_id: i64, metric: &Metric, period: PeriodKey) -> String {
    format!("{namespace}:{{o{org_id}}}:c:{metric}:{period}")
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
        redis_key(namespace, self.org_id, &self.metric, self.period.key())
    }

    fn expire_at(&self) -> i64 {
        self.period.end.timestamp() + RETAIN_AFTER_PERIOD_SECS
    }
}

/// What a check-and-consume decided, with the counter's value afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// Admitted; `used` includes this request's cost.
    Allowed { used: u64 },
    /// Refused; nothing was consumed.
    Denied { used: u64 },
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
        "SELECT used, epoch FROM usage_counters WHERE org_id = $1 AND metric = $2 AND period_key = $3",
    )
    .bind(key.org_id)
    .bind(key.metric.as_str())
    .bind(key.period.key().to_string())
    .fetch_optional(pg)
    .await?;
    Ok(row.map_or_else(Durable::default, |(used, epoch)| Durable {
        used: u64::try_from(used).unwrap_or(0),
        epoch: u64::try_from(epoch).unwrap_or(0),
    }))
}

/// Checks and consumes `cost` against `limit` atomically. One Redis round trip when the counter is live; a
/// missing counter is first rebuilt from PostgreSQL.
pub async fn consume(
    conn: &mut RedisConn,
    pg: &PgPool,
    redis_key: &str,
    key: &CounterKey,
    cost: u64,
    limit: u64,
) -> Result<Consumed, CounterError> {
    let limit = limit.min(MAX_LIMIT);
    let reply: Vec<i64> = CONSUME
        .key(redis_key)
        .arg(cost)
        .arg(limit)
        .invoke_async(conn)
        .await?;
    let reply = match reply.as_slice() {
        [-1, _] => {
            let durable = load(pg, key).await?;
            CONSUME
                .key(redis_key)
                .arg(cost)
                .arg(limit)
                .arg(durable.used)
                .arg(durable.epoch)
                .arg(key.expire_at())
                .invoke_async(conn)
                .await?
        }
        _ => reply,
    };
    match reply.as_slice() {
        [1, used] => Ok(Consumed::Allowed {
            used: u64::try_from(*used).unwrap_or(0),
        }),
        [0, used] => Ok(Consumed::Denied {
            used: u64::try_from(*used).unwrap_or(0),
        }),
        _ => Err(CounterError::Protocol),
    }
}

/// The live value of a counter without consuming: Redis when present, else the durable copy.
pub async fn current(
    conn: &mut RedisConn,
    pg: &PgPool,
    namespace: &str,
    key: &CounterKey,
) -> Result<u64, CounterError> {
    let used: Option<u64> = redis::cmd("HGET")
        .arg(key.redis_key(namespace))
        .arg("u")
        .query_async(conn)
        .await?;
    match used {
        Some(used) => Ok(used),
        None => Ok(load(pg, key).await?.used),
    }
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
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("HMGET")
            .arg(key.redis_key(namespace))
            .arg("u")
            .arg("e");
    }
    let values: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(conn).await?;
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
         ON CONFLICT (org_id, metric, period_key) DO UPDATE
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

/// Write-back of `keys`: [`snapshot`] then [`write`]. Returns how many rows changed.
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
pub async fn record<'e>(
    conn: &mut RedisConn,
    pg: impl PgExecutor<'e>,
    namespace: &str,
    key: &CounterKey,
    request_id: &str,
    value: u64,
) -> Result<Recorded, CounterError> {
    use sha2::Digest;
    let counter = key.redis_key(namespace);
    let marker = format!(
        "{namespace}:{{o{}}}:r:{}",
        key.org_id,
        hex::encode(sha2::Sha256::digest(request_id.as_bytes()))
    );
    let call = |seed: Option<Durable>| {
        let mut invocation = RECORD.key(&counter);
        invocation.key(&marker).arg(value);
        match seed {
            Some(d) => invocation.arg(d.used).arg(d.epoch).arg(key.expire_at()),
            None => invocation.arg("").arg(0).arg(0),
        };
        invocation.arg(RECORD_MARKER_TTL_SECS);
        invocation
    };
    let mut reply: Vec<i64> = call(None).invoke_async(conn).await?;
    if reply.first() == Some(&-1) {
        let durable = load(pg, key).await?;
        reply = call(Some(durable)).invoke_async(conn).await?;
    }
    match reply.as_slice() {
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
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, metric, period_key) DO NOTHING",
    )
    .bind(key.org_id)
    .bind(key.metric.as_str())
    .bind(key.period.key().to_string())
    .bind(key.period.start)
    .bind(key.period.end)
    .execute(pg)
    .await?;
    match consume(conn, pg, &key.redis_key(namespace), key, 0, MAX_LIMIT).await? {
        Consumed::Allowed { used } | Consumed::Denied { used } => Ok(used),
    }
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
    let before: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT c.org_id, c.metric, c.used FROM usage_counters c
           JOIN UNNEST($1::bigint[], $2::text[], $3::text[]) AS k(org_id, metric, period_key)
             ON (c.org_id, c.metric, c.period_key) = (k.org_id, k.metric, k.period_key)
          FOR UPDATE OF c",
    )
    .bind(&rows.org_id)
    .bind(&rows.metric)
    .bind(&rows.period_key)
    .fetch_all(&mut *tx)
    .await?;
    let epochs: Vec<(i64, String, i64)> = sqlx::query_as(
        "INSERT INTO usage_counters AS c (org_id, metric, period_key, period_start, period_end, used, epoch)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                              $6::bigint[], $7::bigint[])
         ON CONFLICT (org_id, metric, period_key) DO UPDATE
            SET used = 0, epoch = c.epoch + 1, updated_at = now()
         RETURNING c.org_id, c.metric, c.epoch",
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
    tx.commit().await?;

    let epoch_of: std::collections::HashMap<(i64, &str), i64> = epochs
        .iter()
        .map(|(o, m, e)| ((*o, m.as_str()), *e))
        .collect();
    let mut had_usage: std::collections::HashSet<(i64, &str)> = before
        .iter()
        .filter(|(_, _, used)| *used > 0)
        .map(|(o, m, _)| (*o, m.as_str()))
        .collect();
    // Pipelined EVALSHA cannot fall back to EVAL on NOSCRIPT: make sure the script is loaded first.
    RESET.prepare_invoke().load_async(conn).await?;
    let mut pipe = redis::pipe();
    for key in keys {
        let epoch = epoch_of
            .get(&(key.org_id, key.metric.as_str()))
            .copied()
            .unwrap_or(1);
        pipe.invoke_script(
            RESET
                .key(key.redis_key(namespace))
                .arg(epoch)
                .arg(key.expire_at()),
        );
    }
    let previous: Vec<i64> = pipe.query_async(conn).await?;
    for (key, prev) in keys.iter().zip(previous) {
        if prev > 0 {
            had_usage.insert((key.org_id, key.metric.as_str()));
        }
    }
    Ok(had_usage.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_cluster_slot_per_org() {
        let metric = Metric::parse("api_call").unwrap();
        let period = PeriodKey::parse("2026-11").unwrap();
        assert_eq!(
            redis_key("tg", 42, &metric, period),
            "tg:{o42}:c:api_call:2026-11"
        );
        let tokens = Metric::parse("tokens").unwrap();
        let a = redis_key("tg", 42, &metric, period);
        let b = redis_key("tg", 42, &tokens, PeriodKey::parse("2027-01").unwrap());
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&a), "{o42}");
        assert_eq!(tag(&a), tag(&b), "one hash tag, one slot");
    }
}
