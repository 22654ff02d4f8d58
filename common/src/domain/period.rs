//! Billing periods and their `YYYY-MM` keys.
//!
//! A [`Period`] is half-open, `[start, end)`, so consecutive periods tile time with no gap and no
//! overlap and an instant on a boundary belongs to the period that starts there.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, Utc};
use serde::{Deserialize, Serialize};

use super::DomainError;

const FIELD: &str = "periodKey";
const REASON: &str = "must be YYYY-MM (a four-digit year, month 01 to 12)";
const MIN_YEAR: u16 = 0;
const MAX_YEAR: u16 = 9999;

/// `YYYY-MM` of a period's start (UTC), the period's name in the API, the database and Redis.
///
/// Ordering is chronological. Serializes as the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeriodKey {
    // Field order makes the derived `Ord` chronological.
    year: u16,
    month: u8,
}

// === impl PeriodKey ===

impl PeriodKey {
    /// The wire name of this field, used in error messages: `periodKey`.
    pub const FIELD: &'static str = FIELD;
    /// What [`PeriodKey::parse`] accepts, as an ECMA-262 regular expression.
    pub const PATTERN: &'static str = "^[0-9]{4}-(0[1-9]|1[0-2])$";

    /// Validates `s` as `YYYY-MM`: a four-digit year (0000..=9999) and month 01..=12. Any well-formed key parses;
    /// whether it names a period that makes sense (a client-sent key must be the derived one) is the caller's
    /// business.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let invalid = DomainError::Invalid {
            field: FIELD,
            reason: REASON,
        };
        let bytes = s.as_bytes();
        let digits = |range: std::ops::Range<usize>| -> Option<u16> {
            let part = bytes.get(range)?;
            part.iter().try_fold(0u16, |acc, &b| {
                b.is_ascii_digit().then(|| acc * 10 + u16::from(b - b'0'))
            })
        };
        if bytes.len() != 7 || bytes.get(4) != Some(&b'-') {
            return Err(invalid);
        }
        match (digits(0..4), digits(5..7)) {
            (Some(year), Some(month))
                if (MIN_YEAR..=MAX_YEAR).contains(&year) && (1..=12).contains(&month) =>
            {
                Ok(Self {
                    year,
                    month: u8::try_from(month).map_err(|_| invalid)?,
                })
            }
            _ => Err(invalid),
        }
    }

    /// The `YYYY-MM` (UTC) of `at`.
    ///
    /// Instants before year 0 or after 9999 saturate to `0000-01` and `9999-12`: a key outside that
    /// range could not be parsed back.
    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        let year = at.year();
        if year < i32::from(MIN_YEAR) {
            return Self {
                year: MIN_YEAR,
                month: 1,
            };
        }
        match u16::try_from(year) {
            Ok(year) if year <= MAX_YEAR => Self {
                year,
                // `month()` is 1..=12.
                month: u8::try_from(at.month()).unwrap_or(12),
            },
            _ => Self {
                year: MAX_YEAR,
                month: 12,
            },
        }
    }

    /// The year, 0..=9999.
    pub fn year(&self) -> u16 {
        self.year
    }

    /// The month, 1..=12.
    pub fn month(&self) -> u8 {
        self.month
    }
}

impl fmt::Display for PeriodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for PeriodKey {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for PeriodKey {
    type Error = DomainError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PeriodKey> for String {
    fn from(key: PeriodKey) -> String {
        key.to_string()
    }
}

/// A billing period: `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    /// First instant of the period.
    pub start: DateTime<Utc>,
    /// First instant of the next period.
    pub end: DateTime<Utc>,
}

// === impl Period ===

impl Period {
    /// The monthly billing period anchored at `anchor` that contains `now`, with Stripe's semantics.
    ///
    /// Period `n` starts at `anchor + n months`, with the anchor's day of month clamped to the
    /// month's last day and the anchor's time of day kept: an anchor of Jan 31 gives Feb 28 (or 29),
    /// then Mar 31, then Apr 30. Each start is computed from the original anchor, never from the
    /// previous (possibly clamped) start, and `n` is negative when `now` is before `anchor`.
    ///
    /// Always `start <= now < end`. Instants within a month of chrono's representable range
    /// saturate to [`DateTime::MIN_UTC`] / [`DateTime::MAX_UTC`].
    pub fn containing(anchor: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        // Start `n` lies in the month `n` months after the anchor's, so the period containing `now`
        // is the one starting in `now`'s month, or the one before if that start is still ahead.
        let mut n = month_index(now) - month_index(anchor);
        if shift_months(anchor, n).is_none_or(|start| start > now) {
            n -= 1;
        }
        Self {
            start: shift_months(anchor, n).unwrap_or(DateTime::<Utc>::MIN_UTC),
            end: shift_months(anchor, n + 1).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// The calendar month (UTC) containing `now`: the 1st at 00:00:00 to the 1st of the next month.
    ///
    /// Orgs without a subscription are metered over calendar months.
    pub fn calendar_month(now: DateTime<Utc>) -> Self {
        // The Unix epoch is a 1st at midnight, so its anchored periods are the calendar months.
        Self::containing(DateTime::<Utc>::UNIX_EPOCH, now)
    }

    /// The period's key: `YYYY-MM` of its start.
    pub fn key(&self) -> PeriodKey {
        PeriodKey::from_datetime(self.start)
    }

    /// The period after this one for the same `anchor`.
    pub fn next(&self, anchor: DateTime<Utc>) -> Self {
        Self::containing(anchor, self.end)
    }

    /// Whether `t` is in `[start, end)`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    /// Whole seconds from `now` until `end`, rounded up, so waiting that long always reaches the
    /// next period: at least 1 while `now < end`, 0 once `now >= end`.
    ///
    /// This is `Retry-After` and `RateLimit-Reset`.
    pub fn seconds_until_end(&self, now: DateTime<Utc>) -> u64 {
        if now >= self.end {
            return 0;
        }
        let left = self.end - now;
        let whole = left.num_seconds() + i64::from(left.subsec_nanos() > 0);
        u64::try_from(whole).unwrap_or(u64::MAX)
    }
}

/// Months since year 0 of `at`'s month: consecutive months have consecutive indices.
fn month_index(at: DateTime<Utc>) -> i64 {
    i64::from(at.year()) * 12 + i64::from(at.month0())
}

/// `anchor` moved by `n` months, its day clamped to the target month's last day; `None` when out of
/// chrono's range.
fn shift_months(anchor: DateTime<Utc>, n: i64) -> Option<DateTime<Utc>> {
    let months = Months::new(u32::try_from(n.unsigned_abs()).ok()?);
    if n >= 0 {
        anchor.checked_add_months(months)
    } else {
        anchor.checked_sub_months(months)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeDelta};
    use proptest::prelude::*;

    use super::*;

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|date| date.and_hms_opt(h, min, s))
            .map(|dt| dt.and_utc())
            .expect("valid test date")
    }

    fn period(start: DateTime<Utc>, end: DateTime<Utc>) -> Period {
        Period { start, end }
    }

    #[test]
    fn period_key_parses_and_prints() {
        let key = PeriodKey::parse("2026-11").expect("valid");
        assert_eq!((key.year(), key.month()), (2026, 11));
        assert_eq!(key.to_string(), "2026-11");
        assert_eq!(
            PeriodKey::parse("2000-01").map(|k| k.to_string()),
            Ok("2000-01".into())
        );
        assert_eq!(
            PeriodKey::parse("9999-12").map(|k| k.to_string()),
            Ok("9999-12".into())
        );
        for bad in [
            "",
            "2026-1",
            "2026-13",
            "2026-00",
            "2026/11",
            "26-11",
            "2026-11-01",
            "２026-11",
            "+026-11",
            "2026-1x",
        ] {
            let err = PeriodKey::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("periodKey: "), "{err}");
        }
        let key = |s| PeriodKey::parse(s).expect("valid");
        assert!(key("2026-09") < key("2026-10"));
        assert!(key("2026-12") < key("2027-01"));
        assert!(key("2026-12") < key("2100-01"));
        assert_eq!(
            key("1999-01").to_string(),
            "1999-01",
            "well-formed, if unlikely"
        );
    }

    #[test]
    fn period_key_serde_and_saturation() {
        let key = PeriodKey::parse("2028-02").expect("valid");
        assert_eq!(serde_json::to_string(&key).expect("ser"), r#""2028-02""#);
        assert_eq!(
            serde_json::from_str::<PeriodKey>(r#""2028-02""#).expect("de"),
            key
        );
        assert!(serde_json::from_str::<PeriodKey>(r#""2028-2""#).is_err());
        let early = PeriodKey::from_datetime(utc(1999, 12, 31, 23, 59, 59));
        assert_eq!(early.to_string(), "1999-12", "never re-dated");
        assert_eq!(
            PeriodKey::from_datetime(DateTime::<Utc>::MIN_UTC).to_string(),
            "0000-01"
        );
        assert_eq!(
            PeriodKey::from_datetime(DateTime::<Utc>::MAX_UTC).to_string(),
            "9999-12"
        );
    }

    #[test]
    fn jan_31_anchor_clamps_in_a_leap_year_and_recovers() {
        let anchor = utc(2028, 1, 31, 0, 0, 0);
        let feb = Period::containing(anchor, utc(2028, 2, 15, 0, 0, 0));
        assert_eq!(
            feb,
            period(utc(2028, 1, 31, 0, 0, 0), utc(2028, 2, 29, 0, 0, 0))
        );
        let mar = feb.next(anchor);
        assert_eq!(
            mar,
            period(utc(2028, 2, 29, 0, 0, 0), utc(2028, 3, 31, 0, 0, 0))
        );
        let apr = mar.next(anchor);
        assert_eq!(
            apr,
            period(utc(2028, 3, 31, 0, 0, 0), utc(2028, 4, 30, 0, 0, 0))
        );
        assert_eq!(apr.next(anchor).end, utc(2028, 5, 31, 0, 0, 0));
    }

    #[test]
    fn jan_31_anchor_in_a_common_year() {
        let anchor = utc(2027, 1, 31, 0, 0, 0);
        let p = Period::containing(anchor, utc(2027, 3, 1, 0, 0, 0));
        assert_eq!(
            p,
            period(utc(2027, 2, 28, 0, 0, 0), utc(2027, 3, 31, 0, 0, 0))
        );
        assert_eq!(p.key().to_string(), "2027-02");
    }

    #[test]
    fn december_to_january() {
        let anchor = utc(2026, 3, 15, 0, 0, 0);
        let p = Period::containing(anchor, utc(2027, 1, 2, 0, 0, 0));
        assert_eq!(
            p,
            period(utc(2026, 12, 15, 0, 0, 0), utc(2027, 1, 15, 0, 0, 0))
        );
        assert_eq!(p.key().to_string(), "2026-12");
        assert_eq!(p.next(anchor).key().to_string(), "2027-01");
    }

    #[test]
    fn feb_29_anchor() {
        let anchor = utc(2028, 2, 29, 0, 0, 0);
        let p = Period::containing(anchor, utc(2029, 3, 1, 0, 0, 0));
        assert_eq!(
            p,
            period(utc(2029, 2, 28, 0, 0, 0), utc(2029, 3, 29, 0, 0, 0))
        );
        let p = Period::containing(anchor, utc(2032, 2, 29, 12, 0, 0));
        assert_eq!(
            p,
            period(utc(2032, 2, 29, 0, 0, 0), utc(2032, 3, 29, 0, 0, 0))
        );
    }

    #[test]
    fn anchor_time_of_day_is_kept() {
        let anchor = utc(2026, 1, 31, 13, 45, 10);
        let p = Period::containing(anchor, utc(2026, 2, 28, 13, 45, 9));
        assert_eq!(
            p,
            period(utc(2026, 1, 31, 13, 45, 10), utc(2026, 2, 28, 13, 45, 10))
        );
        let p = Period::containing(anchor, utc(2026, 2, 28, 13, 45, 10));
        assert_eq!(
            p,
            period(utc(2026, 2, 28, 13, 45, 10), utc(2026, 3, 31, 13, 45, 10))
        );
    }

    #[test]
    fn boundary_instant_belongs_to_the_new_period() {
        let anchor = utc(2026, 10, 1, 0, 0, 0);
        let boundary = utc(2026, 12, 1, 0, 0, 0);
        let p = Period::containing(anchor, boundary);
        assert_eq!(p.start, boundary);
        assert_eq!(p.key().to_string(), "2026-12");
        let before = Period::containing(anchor, boundary - TimeDelta::nanoseconds(1));
        assert_eq!(before.end, boundary);
        assert!(!before.contains(boundary));
        assert_eq!(
            before.seconds_until_end(boundary - TimeDelta::nanoseconds(1)),
            1
        );
    }

    #[test]
    fn now_before_the_anchor() {
        let anchor = utc(2026, 5, 31, 8, 0, 0);
        let p = Period::containing(anchor, utc(2026, 3, 10, 0, 0, 0));
        assert_eq!(
            p,
            period(utc(2026, 2, 28, 8, 0, 0), utc(2026, 3, 31, 8, 0, 0))
        );
        let p = Period::containing(anchor, utc(2020, 5, 31, 7, 59, 59));
        assert_eq!(
            p,
            period(utc(2020, 4, 30, 8, 0, 0), utc(2020, 5, 31, 8, 0, 0))
        );
    }

    #[test]
    fn calendar_month_and_seconds_until_end() {
        let now = utc(2026, 11, 24, 0, 0, 0);
        let p = Period::calendar_month(now);
        assert_eq!(
            p,
            period(utc(2026, 11, 1, 0, 0, 0), utc(2026, 12, 1, 0, 0, 0))
        );
        assert_eq!(p.seconds_until_end(now), 604_800);
        assert_eq!(
            p.seconds_until_end(now + TimeDelta::milliseconds(1)),
            604_800
        );
        assert_eq!(p.seconds_until_end(p.end), 0);
        assert_eq!(p.seconds_until_end(p.end + TimeDelta::days(3)), 0);
    }

    #[test]
    fn extremes_do_not_panic() {
        for now in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
            let p = Period::containing(utc(2026, 1, 31, 0, 0, 0), now);
            assert!(p.start <= now && now <= p.end);
            let _ = Period::calendar_month(now).key();
        }
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        // 2000-02-01T00:00:00Z ..= 2099-12-31T23:59:59Z, whole seconds: a month past the first representable
        // period key, so the period containing any of these instants starts in 2000 or later.
        (949_363_200_i64..4_102_444_800)
            .prop_map(|secs| DateTime::from_timestamp(secs, 0).expect("in chrono's range"))
    }

    fn check_period(p: Period, now: DateTime<Utc>) -> Result<(), TestCaseError> {
        prop_assert!(
            p.start <= now && now < p.end,
            "{p:?} does not contain {now}"
        );
        prop_assert!(p.contains(now));
        let days = p.end - p.start;
        prop_assert!(
            TimeDelta::days(28) <= days && days <= TimeDelta::days(31),
            "{p:?} lasts {days}"
        );
        prop_assert_eq!(p.key().to_string(), p.start.format("%Y-%m").to_string());
        prop_assert!(p.seconds_until_end(now) > 0);
        prop_assert!(p.seconds_until_end(p.start) >= p.seconds_until_end(now));
        prop_assert_eq!(p.seconds_until_end(p.end), 0);
        Ok(())
    }

    proptest! {
        #[test]
        fn containing_contains_now_and_tiles(anchor in instant(), now in instant()) {
            let p = Period::containing(anchor, now);
            check_period(p, now)?;
            // Every start keeps the anchor's time of day.
            prop_assert_eq!(p.start.time(), anchor.time());
            // Tiling: the next period starts exactly at this end, the previous one ends at this start.
            let next = Period::containing(anchor, p.end);
            prop_assert_eq!(next.start, p.end);
            prop_assert_eq!(p.next(anchor), next);
            let prev = Period::containing(anchor, p.start - TimeDelta::seconds(1));
            prop_assert_eq!(prev.end, p.start);
            // The period is the same whichever instant inside it is asked about.
            prop_assert_eq!(Period::containing(anchor, p.start), p);
            prop_assert_eq!(Period::containing(anchor, p.end - TimeDelta::seconds(1)), p);
        }

        #[test]
        fn calendar_month_contains_now_and_tiles(now in instant()) {
            let p = Period::calendar_month(now);
            check_period(p, now)?;
            prop_assert_eq!(p.start.day(), 1);
            prop_assert_eq!(p.start.time(), chrono::NaiveTime::MIN);
            prop_assert_eq!(p.key(), PeriodKey::from_datetime(now));
            prop_assert_eq!(Period::calendar_month(p.end).start, p.end);
        }

        #[test]
        fn period_key_round_trips(now in instant()) {
            let key = PeriodKey::from_datetime(now);
            prop_assert_eq!(PeriodKey::parse(&key.to_string()), Ok(key));
        }
    }
}
