//! Counter slots: the proxy's handle on each counter it has touched, its lease on that counter, and the dirty set
//! write-back drains.
//!
//! A slot is created once per org, metric and period and then reused, so the hot path neither formats a Redis key
//! nor takes a global lock.
//!
//! # Leases
//!
//! Most requests are admitted from the slot's lease: units reserved in Redis by an earlier round trip, taken here
//! with a short, uncontended lock and no I/O. When the lease cannot cover a request, the request makes the round
//! trip itself, one at a time per slot ([`Slot::begin_lease`] → `counters::lease` → [`Slot::finish_lease`]),
//! reporting its consumption, handing back the unusable remainder, and asking for a block sized at 1/16 of what is
//! still unreserved (capped at [`MAX_BLOCK`]): far from the limit one round trip serves many requests; near it,
//! blocks shrink to the request's cost, so the last units go out one request at a time and nothing is ever
//! over-admitted. The settle loop (`background::WriteBack`) reports consumption every few milliseconds and hands
//! back leases that sat idle.
//!
//! Reports are absolute (total consumed in the epoch, units held now), so a call whose reply is lost — a timeout
//! after Redis applied it — is corrected by the next report instead of being counted twice or leaking a lease.
//!
//! # Dirty flags
//!
//! Marking a slot dirty is two atomic stores. Write-back swaps the flag off *before* reading Redis, and a request
//! marks the flag *after* its admission, so a change is either seen by the read or leaves the flag set for the next
//! flush.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tollgate_common::store::counters::{CounterKey, Leased, Report};

/// The largest block a replica leases at once.
pub const MAX_BLOCK: u64 = 100;
/// A block is this fraction of what is still unreserved, so several replicas near the limit leave units for each other.
const BLOCK_DIVISOR: u64 = 16;

/// A replica's lease on one counter.
#[derive(Debug)]
struct Lease {
    /// Leased units not used yet.
    available: u64,
    /// Units used from leases in this epoch, in total (reported as is: reports are absolute).
    consumed: u64,
    /// `consumed` as of the last report Redis acknowledged.
    reported: u64,
    /// Units given back in this epoch, in total: requests admitted that the upstream never answered.
    refunded: u64,
    /// `refunded` as of the last report Redis acknowledged.
    refunds_reported: u64,
    /// The counter epoch the lease belongs to; -1 before the first round trip.
    epoch: i64,
    /// `limit - used - leased` as of the last round trip: what other requests could still be granted.
    unreserved: u64,
    /// Last admission (ms since the epoch).
    last_used_ms: i64,
}

impl Lease {
    /// Forgets everything of the current epoch and adopts `epoch`.
    fn restart(&mut self, epoch: i64) {
        *self = Self {
            epoch,
            unreserved: self.unreserved,
            last_used_ms: self.last_used_ms,
            ..Self::default()
        };
    }

    fn report(&self, held: u64) -> Report {
        Report {
            epoch: self.epoch,
            consumed: self.consumed,
            held,
            acknowledged: self.reported,
            refunded: self.refunded,
            refunds_acknowledged: self.refunds_reported,
        }
    }
}

/// An admitted request: what the `RateLimit-Remaining` estimate is, and the epoch of the lease it came from (a
/// refund applies only within that epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Estimated remaining quota.
    pub left: u64,
    /// The lease's epoch at admission.
    pub epoch: i64,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            available: 0,
            consumed: 0,
            reported: 0,
            refunded: 0,
            refunds_reported: 0,
            epoch: -1,
            unreserved: 0,
            last_used_ms: 0,
        }
    }
}

/// One counter the proxy meters.
pub struct Slot {
    /// Which counter.
    pub key: CounterKey,
    /// Its Redis key, formatted once.
    pub redis_key: String,
    dirty: AtomicBool,
    /// When the oldest unflushed change was made (ms since the epoch); 0 when clean.
    dirty_since_ms: AtomicI64,
    lease: Mutex<Lease>,
    /// One Redis call per slot at a time: a replica's reports must not overtake each other.
    pub in_flight: tokio::sync::Mutex<()>,
}

impl Slot {
    fn new(key: CounterKey, namespace: &str) -> Self {
        Self {
            redis_key: key.redis_key(namespace),
            key,
            dirty: AtomicBool::new(false),
            dirty_since_ms: AtomicI64::new(0),
            lease: Mutex::new(Lease::default()),
            in_flight: tokio::sync::Mutex::new(()),
        }
    }

    fn lease(&self) -> MutexGuard<'_, Lease> {
        self.lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits `cost` from the local lease when it covers it.
    pub fn take_local(&self, cost: u64, now_ms: i64) -> Option<Admitted> {
        let mut lease = self.lease();
        if lease.epoch < 0 || lease.available < cost {
            return None;
        }
        lease.available -= cost;
        lease.consumed += cost;
        lease.last_used_ms = now_ms;
        Some(Admitted {
            left: lease.unreserved + lease.available,
            epoch: lease.epoch,
        })
    }

    /// Gives back `cost` admitted in `epoch` for a request the upstream never answered: the units return to the
    /// lease (so the next report moves them from used back to leased). Nothing happens when the epoch has moved
    /// since (a reset voided that consumption anyway). Returns whether the refund applied.
    pub fn refund(&self, cost: u64, epoch: i64) -> bool {
        let mut lease = self.lease();
        if lease.epoch != epoch || epoch < 0 || lease.consumed < lease.refunded + cost {
            return false;
        }
        lease.refunded += cost;
        lease.available += cost;
        true
    }

    /// Starts a round trip (holding `in_flight`): reports consumption, hands back the remainder, and sizes the
    /// block to ask for.
    pub fn begin_lease(&self, cost: u64) -> (Report, u64) {
        let mut lease = self.lease();
        lease.available = 0;
        let report = lease.report(0);
        let want = (lease.unreserved / BLOCK_DIVISOR).clamp(cost, MAX_BLOCK.max(cost));
        (report, want)
    }

    /// Applies a round trip's reply; `Some` when the request was admitted.
    ///
    /// If the call failed instead, nothing is restored: the remainder handed back stays handed back (Redis either
    /// applied the report or will apply the next one, which says the same), and consumption is a running total.
    pub fn finish_lease(
        &self,
        reply: &Leased,
        report: Report,
        cost: u64,
        limit: u64,
        now_ms: i64,
    ) -> Option<Admitted> {
        let mut lease = self.lease();
        if lease.epoch == reply.epoch {
            lease.reported = report.consumed;
            lease.refunds_reported = report.refunded;
        } else {
            // First contact, or a reset: what this replica consumed and held belongs to another epoch.
            lease.restart(reply.epoch);
        }
        lease.unreserved = limit.saturating_sub(reply.used + reply.leased);
        if !reply.admitted {
            return None;
        }
        lease.available += reply.granted.saturating_sub(cost);
        lease.consumed += cost;
        lease.last_used_ms = now_ms;
        Some(Admitted {
            left: lease.unreserved + lease.available,
            epoch: lease.epoch,
        })
    }

    /// For the settle loop (holding `in_flight`): the report to send, handing back the remainder when the lease sat
    /// idle (or `release_all`). `None` when Redis already knows everything.
    pub fn begin_settle(&self, now_ms: i64, idle_ms: i64, release_all: bool) -> Option<Report> {
        let mut lease = self.lease();
        if lease.epoch < 0 {
            return None;
        }
        let release =
            (release_all || now_ms - lease.last_used_ms >= idle_ms) && lease.available > 0;
        if release {
            lease.available = 0;
        }
        let unreported =
            lease.consumed != lease.reported || lease.refunded != lease.refunds_reported;
        (release || unreported).then(|| lease.report(lease.available))
    }

    /// Applies a settle reply: an epoch that moved voids what this replica still holds.
    pub fn finish_settle(&self, applied: bool, epoch: i64, report: Report) {
        let mut lease = self.lease();
        if applied && lease.epoch == report.epoch {
            lease.reported = lease.reported.max(report.consumed);
            lease.refunds_reported = lease.refunds_reported.max(report.refunded);
        } else if !applied {
            lease.restart(epoch);
        }
    }

    /// Drops the lease after a reset of this counter was announced; the next round trip learns the new epoch.
    pub fn forfeit(&self) {
        self.lease().restart(-1);
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

    /// Every slot (for the settle loop).
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.lock().clone()
    }

    /// Forfeits the leases of the counters of `period` (of one org, or all), after a reset was announced.
    pub fn forfeit(&self, period: &str, org_id: Option<i64>) -> usize {
        let slots = self.lock();
        let mut n = 0;
        for slot in slots.iter() {
            if slot.key.period.key().to_string() == period
                && org_id.is_none_or(|id| id == slot.key.org_id)
            {
                slot.forfeit();
                n += 1;
            }
        }
        n
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
