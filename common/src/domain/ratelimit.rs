//! Per-org rate limits of the control plane's expensive endpoints (those that call Stripe or change keys): a limit
//! such as "20 calls in any 60 s", read from a setting, and the 429 body a refused call gets — a sibling of
//! [`super::DenyEnvelope`] with the same members where they apply (`type`, `title`, `status`, `detail`, `allow`,
//! `remaining`, `limit`) and the window and retry time instead of a metric and period.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// The envelope's problem `type`.
pub const RATE_LIMITED_TYPE: &str = "/problems/rate-limited";
const TITLE: &str = "Too many requests";
const STATUS: u16 = 429;

/// Most calls one limit may allow per window (Redis keeps one entry per admitted call).
pub const MAX_CALLS: u32 = 100_000;
/// Longest window: one day.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// At most `calls` admitted calls in any `window` (a sliding window: no burst at a window's edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Calls admitted per window, 1 to [`MAX_CALLS`].
    pub calls: u32,
    /// The window, 1 s to [`MAX_WINDOW`], in whole seconds.
    pub window: Duration,
}

// === impl RateLimit ===

impl RateLimit {
    /// Parses a setting: `<calls>/<window>` with the window in seconds, minutes or hours (`20/60s`, `100/1h`,
    /// `5/90s`), or `off` (no limit: `None`). The error says what is wrong, never echoing the value.
    pub fn parse_setting(raw: &str) -> Result<Option<Self>, &'static str> {
        const SHAPE: &str = "expected <calls>/<window> such as 20/60s (s, m or h), or off";
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let (calls, window) = raw.split_once('/').ok_or(SHAPE)?;
        let calls: u32 = calls.trim().parse().map_err(|_| SHAPE)?;
        let window = window.trim();
        let (amount, unit) = window.split_at(window.len().saturating_sub(1));
        let amount: u64 = amount.parse().map_err(|_| SHAPE)?;
        let seconds = match unit {
            "s" => Some(amount),
            "m" => amount.checked_mul(60),
            "h" => amount.checked_mul(3600),
            _ => return Err(SHAPE),
        }
        .ok_or("the window must be between 1s and 24h")?;
        if !(1..=MAX_CALLS).contains(&calls) {
            return Err("the number of calls must be between 1 and 100000");
        }
        if !(1..=MAX_WINDOW.as_secs()).contains(&seconds) {
            return Err("the window must be between 1s and 24h");
        }
        Ok(Some(Self {
            calls,
            window: Duration::from_secs(seconds),
        }))
    }

    /// The window in milliseconds, as the limiter script takes it.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.calls, self.window.as_secs())
    }
}

/// A refused call: which group of endpoints, its limit, and when the oldest admitted call leaves the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitEnvelope {
    /// The endpoint group, e.g. `billing` (a fixed word, never an id).
    pub group: &'static str,
    /// The limit refused against.
    pub limit: RateLimit,
    /// Whole seconds until a call would be admitted again, at least 1: the `Retry-After` header.
    pub retry_after: u64,
}

/// The wire form, with members in [`super::DenyEnvelope`]'s order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    allow: bool,
    remaining: u64,
    group: &'a str,
    limit: u32,
    window_seconds: u64,
    retry_after: u64,
}

// === impl RateLimitEnvelope ===

impl RateLimitEnvelope {
    /// The refusal of a call in `group` under `limit`, `retry_after_ms` before a call would be admitted.
    pub fn new(group: &'static str, limit: RateLimit, retry_after_ms: u64) -> Self {
        Self {
            group,
            limit,
            retry_after: retry_after_secs(retry_after_ms),
        }
    }

    /// The envelope as its exact JSON body.
    pub fn to_json(&self) -> String {
        // Cannot fail: every member is a string, an integer or a boolean.
        serde_json::to_string(&self.wire()).unwrap_or_default()
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            kind: RATE_LIMITED_TYPE,
            title: TITLE,
            status: STATUS,
            detail: format!(
                "{} calls of this organization are limited to {} per {} s; retry in {} s",
                self.group,
                self.limit.calls,
                self.limit.window.as_secs(),
                self.retry_after
            ),
            allow: false,
            remaining: 0,
            group: self.group,
            limit: self.limit.calls,
            window_seconds: self.limit.window.as_secs(),
            retry_after: self.retry_after,
        }
    }
}

/// Milliseconds to whole seconds, rounded up and at least 1: a client told to retry after 0 s would retry at once
/// and be refused again.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn settings_parse_or_say_what_is_wrong() {
        let limit = |calls, secs| {
            Some(RateLimit {
                calls,
                window: Duration::from_secs(secs),
            })
        };
        assert_eq!(RateLimit::parse_setting("20/60s"), Ok(limit(20, 60)));
        assert_eq!(RateLimit::parse_setting(" 5 / 2m "), Ok(limit(5, 120)));
        assert_eq!(RateLimit::parse_setting("100/1h"), Ok(limit(100, 3600)));
        assert_eq!(
            RateLimit::parse_setting("100000/24h"),
            Ok(limit(100_000, 86_400))
        );
        assert_eq!(RateLimit::parse_setting("OFF"), Ok(None));
        for bad in [
            "", "20", "20/", "/60s", "20/60", "20/60d", "-1/60s", "x/60s", "20/1.5s",
        ] {
            assert!(
                RateLimit::parse_setting(bad)
                    .unwrap_err()
                    .starts_with("expected"),
                "{bad:?}"
            );
        }
        assert_eq!(
            RateLimit::parse_setting("0/60s"),
            Err("the number of calls must be between 1 and 100000")
        );
        for bad in ["1/0s", "1/25h", "1/99999999999999999h"] {
            assert_eq!(
                RateLimit::parse_setting(bad),
                Err("the window must be between 1s and 24h"),
                "{bad:?}"
            );
        }
        assert_eq!(
            limit(20, 60).map(|l| l.to_string()).as_deref(),
            Some("20/60s")
        );
    }

    #[test]
    fn the_envelope_has_the_standard_members_exactly() {
        let limit = RateLimit {
            calls: 20,
            window: Duration::from_secs(60),
        };
        let envelope = RateLimitEnvelope::new("billing", limit, 11_001);
        assert_eq!(envelope.retry_after, 12);
        assert_eq!(
            envelope.to_json(),
            concat!(
                r#"{"type":"/problems/rate-limited","title":"Too many requests","status":429,"#,
                r#""detail":"billing calls of this organization are limited to 20 per 60 s; retry in 12 s","#,
                r#""allow":false,"remaining":0,"group":"billing","limit":20,"windowSeconds":60,"retryAfter":12}"#
            )
        );
    }

    proptest! {
        #[test]
        fn retry_after_is_never_zero_and_never_early(ms in 0_u64..10_000_000_000) {
            let secs = retry_after_secs(ms);
            prop_assert!(secs >= 1);
            prop_assert!(secs * 1000 >= ms);
            prop_assert!(secs * 1000 < ms + 1000 || ms == 0);
        }

        #[test]
        fn a_parsed_limit_prints_back_to_itself(calls in 1_u32..=MAX_CALLS, secs in 1_u64..=86_400) {
            let raw = format!("{calls}/{secs}s");
            let parsed = RateLimit::parse_setting(&raw).unwrap().unwrap();
            prop_assert_eq!(parsed.to_string(), raw);
        }
    }
}
