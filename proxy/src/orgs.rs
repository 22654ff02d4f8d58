//! Orgs' billing state: the shared [`BillingCache`] (a warm org costs no PostgreSQL query; changes are pushed by
//! PostgreSQL's announcements, see `tollgate_common::billing_cache`), with the proxy's counter slots hung on each
//! entry.

use crate::meter::{Meter, Slot};
use std::sync::{Arc, PoisonError, RwLock};
use tollgate_common::billing_cache::BillingCache;
use tollgate_common::domain::{Metric, Period};
use tollgate_common::store::counters::CounterKey;

/// The proxy's org cache.
pub type OrgCache = BillingCache<Slots>;

/// The slots of an org's current counters, so a warm request finds its slot without the meter's lock.
#[derive(Default)]
pub struct Slots(RwLock<Vec<Arc<Slot>>>);

impl Slots {
    /// The slot of `metric` in `period` for org `org_id`: from this org's list, else from `meter` (which returns
    /// the live slot of the counter if it has one, e.g. after this org was evicted and loaded again).
    pub fn slot(&self, meter: &Meter, org_id: i64, metric: &Metric, period: &Period) -> Arc<Slot> {
        let find = |slots: &[Arc<Slot>]| {
            slots
                .iter()
                .find(|s| {
                    s.counter.key().period.start == period.start
                        && s.counter.key().metric == *metric
                })
                .cloned()
        };
        if let Some(slot) = find(&self.0.read().unwrap_or_else(PoisonError::into_inner)) {
            return slot;
        }
        let mut slots = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = find(&slots) {
            return slot;
        }
        // A new period for this org: the previous periods' slots stay registered with the meter until flushed.
        slots.retain(|s| s.counter.key().period.end > period.start);
        let slot = meter.slot(CounterKey {
            org_id,
            metric: metric.clone(),
            period: *period,
        });
        slots.push(Arc::clone(&slot));
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn an_org_loaded_again_finds_its_live_slot() {
        let meter = Meter::new("t");
        let metric = Metric::parse("api_call").expect("metric");
        let start = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let period = Period {
            start,
            end: start + chrono::Duration::days(31),
        };
        let before = Slots::default().slot(&meter, 7, &metric, &period);
        // The entry was evicted (its slot list gone) and a new one made: the same slot comes back.
        let after = Slots::default().slot(&meter, 7, &metric, &period);
        assert!(Arc::ptr_eq(&before, &after));
        assert_eq!(meter.len(), 1);
    }
}
