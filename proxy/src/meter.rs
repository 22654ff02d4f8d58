//! Counter slots: the proxy's handle on each counter it has touched, and the dirty set write-back drains.
//!
//! A slot is created once per org, metric and period and then reused, so the hot path neither formats a Redis key
//! nor takes a global lock: marking a slot dirty is two atomic stores. Write-back swaps the flag off *before*
//! reading Redis, and a request marks the flag *after* its increment, so an increment is either seen by the read
//! or leaves the flag set for the next flush.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tollgate_common::store::counters::CounterKey;

/// One counter the proxy meters.
pub struct Slot {
    /// Which counter.
    pub key: CounterKey,
    /// Its Redis key, formatted once.
    pub redis_key: String,
    dirty: AtomicBool,
    /// When the oldest unflushed change was made (ms since the epoch); 0 when clean.
    dirty_since_ms: AtomicI64,
}

impl Slot {
    fn new(key: CounterKey, namespace: &str) -> Self {
        Self {
            redis_key: key.redis_key(namespace),
            key,
            dirty: AtomicBool::new(false),
            dirty_since_ms: AtomicI64::new(0),
        }
    }

    /// Records that Redis holds a change PostgreSQL does not have yet.
    pub fn mark_dirty(&self, now: DateTime<Utc>) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            let _ = self.dirty_since_ms.compare_exchange(
                0,
                now.timestamp_millis(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }
}

/// Every slot of this process.
#[derive(Default)]
pub struct Meter {
    namespace: String,
    slots: Mutex<Vec<Arc<Slot>>>,
}

/// Slots taken for one flush, with the age of their oldest change.
pub struct Batch {
    pub slots: Vec<Arc<Slot>>,
    since_ms: Vec<i64>,
}

impl Meter {
    /// A meter whose Redis keys live under `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            slots: Mutex::new(Vec::new()),
        }
    }

    /// A new slot, registered for write-back.
    pub fn slot(&self, key: CounterKey) -> Arc<Slot> {
        let slot = Arc::new(Slot::new(key, &self.namespace));
        self.lock().push(Arc::clone(&slot));
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Slot>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes every dirty slot (clearing its flag) and forgets clean slots of periods that ended before
    /// `forget_before`.
    pub fn take_dirty(&self, forget_before: DateTime<Utc>) -> Batch {
        let mut batch = Batch {
            slots: Vec::new(),
            since_ms: Vec::new(),
        };
        self.lock().retain(|slot| {
            if slot.dirty.swap(false, Ordering::AcqRel) {
                batch
                    .since_ms
                    .push(slot.dirty_since_ms.swap(0, Ordering::AcqRel));
                batch.slots.push(Arc::clone(slot));
                true
            } else {
                slot.key.period.end >= forget_before || Arc::strong_count(slot) > 1
            }
        });
        batch
    }

    /// Puts a failed batch back so the next flush retries it, keeping the original age.
    pub fn requeue(&self, batch: Batch) {
        for (slot, since) in batch.slots.iter().zip(batch.since_ms) {
            slot.dirty.store(true, Ordering::Release);
            let _ =
                slot.dirty_since_ms
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                        Some(if current == 0 {
                            since
                        } else {
                            current.min(since)
                        })
                    });
        }
    }

    /// Seconds since the oldest change that is not yet in PostgreSQL (0 when everything is written).
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> f64 {
        let oldest = self
            .lock()
            .iter()
            .map(|s| s.dirty_since_ms.load(Ordering::Acquire))
            .filter(|ms| *ms > 0)
            .min();
        oldest.map_or(0.0, |ms| {
            ((now.timestamp_millis() - ms).max(0) as f64) / 1000.0
        })
    }
}

impl Batch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The counters to write.
    pub fn keys(&self) -> Vec<CounterKey> {
        self.slots.iter().map(|s| s.key.clone()).collect()
    }
}
