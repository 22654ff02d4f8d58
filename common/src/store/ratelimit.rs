//! The per-org rate limiter of the control plane's expensive endpoints: one Lua script, one round trip.
//!
//! # Why a sliding-window log, on Redis's clock
//!
//! Each admitted call is an entry in a sorted set scored by its time; a call is admitted iff fewer than `calls`
//! entries are younger than the window, and only then recorded. The script runs atomically, so concurrent calls on
//! any number of replicas never admit more than `calls` in any window — exactly, with no burst at a window's edge
//! (a fixed window admits up to twice the limit across a boundary). The window is measured on Redis's clock
//! (`TIME` inside the script), not the caller's: replicas whose clocks disagree still share one exact window. The
//! set holds at most `calls` entries and expires a window after the last call.

use crate::domain::{OrgId, RateLimit};
use crate::store::redis::RedisConn;
use redis::Script;
use std::sync::LazyLock;

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/rate_limit.lua")));

/// The Redis key of an org's log for an endpoint group: `<ns>:{<orgId>}:rl:<group>` (the hash tag keeps an org's
/// logs in one Cluster slot).
pub fn redis_key(namespace: &str, org: &OrgId, group: &str) -> String {
    format!("{namespace}:{{{org}}}:rl:{group}")
}

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted (and recorded); this many more calls would be admitted now.
    Admitted { remaining: u64 },
    /// Refused (nothing recorded); a call would be admitted in this many milliseconds.
    Refused { retry_after_ms: u64 },
}

/// Admits one call against `limit` on the log at `key`, or refuses it.
pub async fn admit(
    conn: &mut RedisConn,
    key: &str,
    limit: &RateLimit,
) -> redis::RedisResult<Admission> {
    let reply: (i64, i64) = ADMIT
        .key(key)
        .arg(limit.calls)
        .arg(limit.window_ms())
        .invoke_async(conn)
        .await?;
    Ok(match reply {
        (1, remaining) => Admission::Admitted {
            remaining: u64::try_from(remaining).unwrap_or(0),
        },
        (_, retry_after_ms) => Admission::Refused {
            retry_after_ms: u64::try_from(retry_after_ms).unwrap_or(0),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_exact() {
        let org = OrgId::parse("org_2aBc").unwrap();
        assert_eq!(redis_key("tg", &org, "billing"), "tg:{org_2aBc}:rl:billing");
    }
}
