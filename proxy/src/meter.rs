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
//! # The settle list
//!
//! The settle loop visits only the slots that may owe Redis something: a slot is listed when a request takes from
//! its lease or refunds to it (one relaxed load when it is listed already, the common case) and leaves the list
//! once it holds nothing and Redis knows all it consumed. An idle proxy with 100,000 cached orgs therefore settles
//! nothing, instead of visiting every slot every pass. Leaving the list happens under the slot's lease lock and
//! the list's lock, so a request that takes from the slot afterwards always lists it again.
//!
//! # Dirty flags
//!
//! Marking a slot dirty is two atomic stores. Write-back swaps the flag off *before* reading Redis, and a request
//! marks the flag *after* its admission, so a change is either seen by the read or leaves the flag set for the next
//! flush.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tollgate_common::domain::PeriodKey;
use tollgate_common::store::counters::{Counter, CounterKey, Leased, Report};

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
    /// The limit the lease was granted under, and the generation of the org's billing state it was computed from:
    /// a request under another generation (a spend cap or a plan changed) goes to Redis with the limit computed
    /// anew, handing the remainder back, so a lowered bound stops admission at this replica's next request — and
    /// while the state stands, a request needs no plan look-up at all.
    limit: u64,
    generation: u64,
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
    /// The limit admitted under.
    pub limit: u64,
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
            limit: 0,
            generation: 0,
            last_used_ms: 0,
        }
    }
}

/// Every lock here guards state that no holder leaves half-changed, so a poisoned one is taken as it is.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One counter the proxy meters.
pub struct Slot {
    /// Which counter, and its Redis key.
    pub counter: Counter,
    dirty: AtomicBool,
    /// When the oldest unflushed change was made (ms since the epoch); 0 when clean.
    dirty_since_ms: AtomicI64,
    lease: Mutex<Lease>,
    /// Whether the slot is on the meter's settle list.
    listed: AtomicBool,
    /// One Redis call per slot at a time: a replica's reports must not overtake each other.
    pub in_flight: tokio::sync::Mutex<()>,
    /// The fingerprint of the usage alerts last recorded for this counter (`store::alerts::fingerprint`; 0:
    /// none yet): write-back records them again only when a threshold's state changed.
    pub alerted: AtomicU64,
    /// The overage terms of this counter's period as last seen while it was current (its plan's included units,
    /// bound and overage price), and the `used` last recorded in `overage_reports`: write-back reports the
    /// period's last usage against them after the period has ended.
    pub overage: Mutex<Option<OverageSeen>>,
}

/// See [`Slot::overage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverageSeen {
    pub included: u64,
    pub bound: u64,
    pub price: String,
    /// The `used` last written to `overage_reports` (0: none yet), and when (ms since the epoch).
    pub recorded: u64,
    pub recorded_at_ms: i64,
}

impl Slot {
    fn new(key: CounterKey, namespace: &str) -> Self {
        Self {
            counter: Counter::new(namespace, key),
            dirty: AtomicBool::new(false),
            dirty_since_ms: AtomicI64::new(0),
            lease: Mutex::new(Lease::default()),
            listed: AtomicBool::new(false),
            in_flight: tokio::sync::Mutex::new(()),
            alerted: AtomicU64::new(0),
            overage: Mutex::new(None),
        }
    }

    fn lease(&self) -> MutexGuard<'_, Lease> {
        locked(&self.lease)
    }

    /// Admits `cost` from the local lease when it covers it and was granted under billing-state `generation`.
    pub fn take_local(&self, cost: u64, generation: u64, now_ms: i64) -> Option<Admitted> {
        let mut lease = self.lease();
        if lease.epoch < 0 || lease.available < cost || lease.generation != generation {
            return None;
        }
        lease.available -= cost;
        lease.consumed += cost;
        lease.last_used_ms = now_ms;
        Some(Admitted {
            left: lease.unreserved + lease.available,
            epoch: lease.epoch,
            limit: lease.limit,
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
        (limit, generation): (u64, u64),
        now_ms: i64,
    ) -> Option<Admitted> {
        let mut lease = self.lease();
        if lease.epoch == reply.epoch {
            lease.reported = report.consumed;
            lease.refunds_reported = report.refunded;
        } else {
            // First contact, or a reset: what this replica consumed and held belongs to another epoch (and a reset
            // re-armed the counter's alerts).
            lease.restart(reply.epoch);
            self.alerted.store(0, Ordering::Relaxed);
        }
        lease.unreserved = limit.saturating_sub(reply.used + reply.leased);
        lease.limit = limit;
        lease.generation = generation;
        if !reply.admitted {
            return None;
        }
        lease.available += reply.granted.saturating_sub(cost);
        lease.consumed += cost;
        lease.last_used_ms = now_ms;
        Some(Admitted {
            left: lease.unreserved + lease.available,
            epoch: lease.epoch,
            limit,
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
            self.alerted.store(0, Ordering::Relaxed);
        }
    }

    /// Leaves the settle list when the slot holds nothing and Redis acknowledged everything it consumed and
    /// refunded; returns whether it left. Called with the list's lock held (see "The settle list").
    fn delist_if_quiescent(&self) -> bool {
        let lease = self.lease();
        let quiescent = lease.epoch < 0
            || (lease.available == 0
                && lease.consumed == lease.reported
                && lease.refunded == lease.refunds_reported);
        if quiescent {
            self.listed.store(false, Ordering::Release);
        }
        quiescent
    }

    /// Drops the lease after a reset of this counter was announced; the next round trip learns the new epoch. The
    /// reset re-armed the counter's usage alerts, so they are recorded again from the next write-back.
    pub fn forfeit(&self) {
        self.lease().restart(-1);
        self.alerted.store(0, Ordering::Relaxed);
    }

    /// Records that Redis holds a change PostgreSQL does not have yet; true when the slot was clean (the caller
    /// puts it on the meter's dirty list).
    fn mark_dirty(&self, now: DateTime<Utc>) -> bool {
        if self.dirty.swap(true, Ordering::AcqRel) {
            return false;
        }
        let _ = self.dirty_since_ms.compare_exchange(
            0,
            now.timestamp_millis(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        true
    }
}

/// Every slot of this process, one per counter: an org evicted from the org cache and loaded again finds its live
/// slot here rather than making a second one (two slots of one counter would report its consumption twice).
#[derive(Default)]
pub struct Meter {
    namespace: String,
    slots: Mutex<HashMap<CounterKey, Arc<Slot>>>,
    /// The slots that may owe Redis a report (see "The settle list").
    settle_list: Mutex<Vec<Arc<Slot>>>,
    /// The dirty slots, each once: a slot joins when its flag goes from clean to dirty and leaves when write-back
    /// takes it, so a flush visits only what changed.
    dirty_list: Mutex<Vec<Arc<Slot>>>,
    /// The minute (of `forget_before`) when clean slots of ended periods were last forgotten.
    forgot_minute: AtomicI64,
    /// Slots whose overage row write-back deferred (it refreshes a current period's row at most every few
    /// seconds): each flush visits them again until their usage is recorded, even if no request changes them.
    overage_due: Mutex<Vec<Arc<Slot>>>,
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
            slots: Mutex::new(HashMap::new()),
            settle_list: Mutex::new(Vec::new()),
            dirty_list: Mutex::new(Vec::new()),
            forgot_minute: AtomicI64::new(i64::MIN),
            overage_due: Mutex::new(Vec::new()),
        }
    }

    /// The slot of counter `key`: the one registered for write-back, else a new one (registered).
    pub fn slot(&self, key: CounterKey) -> Arc<Slot> {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(&key) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(Slot::new(key.clone(), &self.namespace));
        slots.insert(key, Arc::clone(&slot));
        slot
    }

    /// How many slots are registered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CounterKey, Arc<Slot>>> {
        locked(&self.slots)
    }

    /// Records that `slot`'s counter in Redis moved past what PostgreSQL has (after an admission or a settle that
    /// Redis applied).
    pub fn mark_dirty(&self, slot: &Arc<Slot>, now: DateTime<Utc>) {
        if slot.mark_dirty(now) {
            locked(&self.dirty_list).push(Arc::clone(slot));
        }
    }

    /// Takes every dirty slot (clearing its flag), visiting only the dirty list; once a minute (of
    /// `forget_before`) also forgets clean slots of periods that ended before `forget_before`.
    pub fn take_dirty(&self, forget_before: DateTime<Utc>) -> Batch {
        let mut batch = Batch {
            slots: Vec::new(),
            since_ms: Vec::new(),
        };
        // Drained, not replaced: the list keeps its buffer, so a request that lists a slot never allocates (and
        // the batch is allocated and freed by the write-back task alone).
        let taken: Vec<Arc<Slot>> = locked(&self.dirty_list).drain(..).collect();
        for slot in taken {
            // Only write-back clears the flag, so every listed slot is dirty; the check keeps that a fact here.
            if slot.dirty.swap(false, Ordering::AcqRel) {
                batch
                    .since_ms
                    .push(slot.dirty_since_ms.swap(0, Ordering::AcqRel));
                batch.slots.push(slot);
            }
        }
        let due: Vec<Arc<Slot>> = locked(&self.overage_due).drain(..).collect();
        for slot in due {
            if !batch.slots.iter().any(|s| Arc::ptr_eq(s, &slot)) {
                // Not a change to write (its counter is written again, idempotently): no age.
                batch.since_ms.push(0);
                batch.slots.push(slot);
            }
        }
        let minute = forget_before.timestamp().div_euclid(60);
        if self.forgot_minute.swap(minute, Ordering::AcqRel) != minute {
            self.lock().retain(|_, slot| {
                slot.counter.key().period.end >= forget_before
                    || Arc::strong_count(slot) > 1
                    || slot.dirty.load(Ordering::Acquire)
            });
        }
        batch
    }

    /// Has the next flushes visit `slot` until its owed overage is recorded (see `Meter::overage_due`).
    pub fn owe_overage(&self, slot: &Arc<Slot>) {
        let mut due = locked(&self.overage_due);
        if !due.iter().any(|s| Arc::ptr_eq(s, slot)) {
            due.push(Arc::clone(slot));
        }
    }

    /// Every slot (the last settle pass at shutdown hands back every lease).
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.lock().values().cloned().collect()
    }

    /// Puts `slot` on the settle list after a request took from its lease or refunded to it.
    #[inline]
    pub fn list(&self, slot: &Arc<Slot>) {
        if slot.listed.load(Ordering::Relaxed) {
            return;
        }
        let mut list = locked(&self.settle_list);
        if !slot.listed.swap(true, Ordering::AcqRel) {
            list.push(Arc::clone(slot));
        }
    }

    /// The slots on the settle list.
    pub fn to_settle(&self) -> Vec<Arc<Slot>> {
        locked(&self.settle_list).clone()
    }

    /// Takes the slots that owe nothing off the settle list (after a settle pass).
    pub fn prune_settled(&self) {
        locked(&self.settle_list).retain(|slot| !slot.delist_if_quiescent());
    }

    /// How many slots are on the settle list.
    #[cfg(test)]
    pub fn settle_list_len(&self) -> usize {
        locked(&self.settle_list).len()
    }

    /// Forfeits the leases of the counters of `period` (every period when `None`), of one org or all, after a
    /// reset was announced.
    pub fn forfeit(&self, period: Option<PeriodKey>, org_id: Option<i64>) -> usize {
        let slots = self.lock();
        let mut n = 0;
        for slot in slots.values() {
            if period.is_none_or(|p| slot.counter.key().period.key() == p)
                && org_id.is_none_or(|id| id == slot.counter.key().org_id)
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
            if !slot.dirty.swap(true, Ordering::AcqRel) {
                locked(&self.dirty_list).push(Arc::clone(slot));
            }
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
        let oldest = locked(&self.dirty_list)
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
        self.slots.iter().map(|s| s.counter.key().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    //! The lease state machine against a model of the counter scripts (`apply_report.lua`, `lease.lua`,
    //! `settle.lua` and `reset.lua` of `tollgate_common::store::counters`), written out here step for step, so its
    //! invariants are checked without Redis: a grant never takes `used + leased` past the limit, no replica admits
    //! more than it was granted, a repeated settle changes nothing, and a reset voids every older lease.
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use tollgate_common::domain::{Metric, Period};

    /// The counter hash in Redis: `u`, `l`, `e`, and per replica `c:`, `r:`, `h:`.
    #[derive(Debug, Default)]
    struct Counter {
        used: u64,
        leased: u64,
        epoch: i64,
        consumed: HashMap<usize, u64>,
        refunded: HashMap<usize, u64>,
        held: HashMap<usize, u64>,
    }

    impl Counter {
        /// `apply_report.lua`.
        fn apply(&mut self, rid: usize, r: &Report) -> bool {
            let prev_held = self.held.get(&rid).copied().unwrap_or(0);
            if r.epoch != self.epoch {
                self.leased = self.leased.saturating_sub(prev_held);
                self.held.insert(rid, 0);
                return false;
            }
            let prev_c = self.consumed.get(&rid).copied().unwrap_or(r.acknowledged);
            if r.consumed > prev_c {
                self.used += r.consumed - prev_c;
                self.consumed.insert(rid, r.consumed);
            }
            let prev_r = self
                .refunded
                .get(&rid)
                .copied()
                .unwrap_or(r.refunds_acknowledged);
            if r.refunded > prev_r {
                self.used = self.used.saturating_sub(r.refunded - prev_r);
                self.refunded.insert(rid, r.refunded);
            }
            self.leased = self.leased.saturating_sub(prev_held) + r.held;
            self.held.insert(rid, r.held);
            true
        }

        /// `LEASE` (without the reclaiming of crashed replicas' holdings).
        fn lease(&mut self, rid: usize, r: &Report, cost: u64, want: u64, limit: u64) -> Leased {
            self.apply(rid, r);
            let free = limit.saturating_sub(self.used + self.leased);
            let (admitted, granted) = if cost <= free {
                let want = want.min(free).max(cost);
                let granted = want - want % cost;
                self.leased += granted;
                *self.held.entry(rid).or_default() += granted;
                (true, granted)
            } else {
                (false, 0)
            };
            Leased {
                admitted,
                granted,
                used: self.used,
                leased: self.leased,
                epoch: self.epoch,
            }
        }

        /// `RESET`.
        fn reset(&mut self) {
            *self = Self {
                epoch: self.epoch + 1,
                ..Self::default()
            };
        }
    }

    fn slot() -> Slot {
        let start = Utc
            .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .single()
            .expect("start");
        let period = Period::containing(start, start);
        Slot::new(
            CounterKey {
                org_id: 1,
                metric: Metric::parse("api_call").expect("metric"),
                period,
            },
            "t",
        )
    }

    /// One request through a replica, as `service::meter` runs it.
    fn request(
        slot: &Slot,
        counter: &mut Counter,
        rid: usize,
        cost: u64,
        limit: u64,
    ) -> Option<Admitted> {
        if let Some(admitted) = slot.take_local(cost, limit, 0) {
            return Some(admitted);
        }
        let (report, want) = slot.begin_lease(cost);
        let reply = counter.lease(rid, &report, cost, want, limit);
        slot.finish_lease(&reply, report, cost, (limit, limit), 0)
    }

    fn settle(slot: &Slot, counter: &mut Counter, rid: usize, release: bool) -> Option<Report> {
        let report = slot.begin_settle(0, i64::MAX, release)?;
        let applied = counter.apply(rid, &report);
        slot.finish_settle(applied, counter.epoch, report);
        Some(report)
    }

    #[test]
    fn a_lease_admits_exactly_what_it_was_granted() {
        let (slot, mut counter) = (slot(), Counter::default());
        // Cold, the replica knows nothing of the counter and asks for the cost alone.
        let first = request(&slot, &mut counter, 0, 1, 1_000).expect("admitted");
        assert_eq!((counter.held[&0], first.left), (1, 999));
        request(&slot, &mut counter, 0, 1, 1_000).expect("admitted");
        let granted = counter.held[&0];
        assert_eq!(granted, 999 / 16, "a sixteenth of what is unreserved");
        for _ in 1..granted {
            assert!(slot.take_local(1, 1_000, 0).is_some());
        }
        assert!(slot.take_local(1, 1_000, 0).is_none(), "the lease is spent");
    }

    #[test]
    fn a_repeated_settle_changes_nothing() {
        let (slot, mut counter) = (slot(), Counter::default());
        for _ in 0..5 {
            request(&slot, &mut counter, 0, 1, 1_000).expect("admitted");
        }
        let report = settle(&slot, &mut counter, 0, false).expect("consumption to report");
        let (used, leased) = (counter.used, counter.leased);
        assert_eq!(used, 5);
        // The same report delivered again (a reply lost, the call retried) and the slot's own next pass.
        assert!(counter.apply(0, &report));
        assert_eq!((counter.used, counter.leased), (used, leased));
        assert!(
            settle(&slot, &mut counter, 0, false).is_none(),
            "nothing new to report"
        );
    }

    #[test]
    fn a_reset_voids_older_leases_and_refunds() {
        let (slot, mut counter) = (slot(), Counter::default());
        let admitted = request(&slot, &mut counter, 0, 1, 1_000).expect("admitted");
        counter.reset();
        slot.forfeit();
        assert!(
            slot.take_local(1, 1_000, 0).is_none(),
            "the voided lease admits nothing"
        );
        assert!(
            !slot.refund(1, admitted.epoch),
            "a refund from the old epoch does not apply"
        );
        let again = request(&slot, &mut counter, 0, 1, 1_000).expect("admitted in the new epoch");
        assert_eq!(again.epoch, counter.epoch);
        assert_eq!(counter.used + counter.leased, counter.held[&0]);
    }

    #[test]
    fn a_lowered_limit_stops_admission_at_the_next_request() {
        let (slot, mut counter) = (slot(), Counter::default());
        for _ in 0..50 {
            request(&slot, &mut counter, 0, 1, 1_000).expect("admitted");
        }
        assert!(counter.held[&0] > 0, "the replica holds a lease");
        // A spend cap lowered below what was used: the lease granted under 1,000 admits nothing more, and the
        // round trip hands it back.
        assert!(slot.take_local(1, 40, 0).is_none());
        assert!(request(&slot, &mut counter, 0, 1, 40).is_none());
        assert_eq!(
            (counter.used, counter.leased),
            (50, 0),
            "everything consumed is used, nothing is held"
        );
        // Raised again: admitted under the new limit.
        assert!(request(&slot, &mut counter, 0, 1, 60).is_some());
        assert!(counter.used + counter.leased <= 60);
    }

    #[test]
    fn only_slots_that_owe_redis_are_on_the_settle_list() {
        let meter = Meter::new("t");
        let mut counter = Counter::default();
        let slot = meter.slot(slot().counter.key().clone());
        assert_eq!(
            meter.settle_list_len(),
            0,
            "a slot nobody took from owes nothing"
        );

        // Cold, the first request leases its cost alone; the second leases a block.
        for _ in 0..2 {
            request(&slot, &mut counter, 0, 1, 1_000).expect("admitted");
            meter.list(&slot);
        }
        assert_eq!(meter.settle_list_len(), 1, "listed once");
        meter.prune_settled();
        assert_eq!(meter.settle_list_len(), 1, "it holds a lease: it stays");

        settle(&slot, &mut counter, 0, false).expect("consumption to report");
        meter.prune_settled();
        assert_eq!(
            meter.settle_list_len(),
            1,
            "reported, but still holding units"
        );

        settle(&slot, &mut counter, 0, true).expect("the lease handed back");
        meter.prune_settled();
        assert_eq!(
            meter.settle_list_len(),
            0,
            "holds nothing, Redis knows everything: it leaves"
        );

        request(&slot, &mut counter, 0, 1, 1_000).expect("admitted");
        meter.list(&slot);
        assert_eq!(
            meter.settle_list_len(),
            1,
            "a request after it left lists it again"
        );
    }

    #[test]
    fn write_back_takes_only_the_slots_that_changed_each_once() {
        let meter = Meter::new("t");
        let key = slot().counter.key().clone();
        let now = key.period.start;
        let a = meter.slot(key.clone());
        let mut other = key.clone();
        other.org_id = 2;
        let b = meter.slot(other);
        assert!(meter.take_dirty(now).is_empty(), "nothing changed");

        meter.mark_dirty(&a, now);
        meter.mark_dirty(&a, now + chrono::Duration::seconds(5));
        assert_eq!(
            meter.lag_seconds(now + chrono::Duration::seconds(2)),
            2.0,
            "aged from the first change"
        );
        let batch = meter.take_dirty(now);
        assert_eq!(
            batch.slots.len(),
            1,
            "one slot, once, however often it changed"
        );
        assert!(Arc::ptr_eq(&batch.slots[0], &a));
        assert_eq!(meter.lag_seconds(now), 0.0);
        assert!(
            meter.take_dirty(now).is_empty(),
            "taken: clean until it changes again"
        );

        meter.requeue(batch);
        meter.mark_dirty(&b, now);
        meter.mark_dirty(&a, now);
        let again = meter.take_dirty(now);
        assert_eq!(
            again.slots.len(),
            2,
            "a failed batch comes back, beside the new change"
        );
    }

    #[test]
    fn clean_slots_of_ended_periods_are_forgotten_once_a_minute() {
        let meter = Meter::new("t");
        let key = slot().counter.key().clone();
        let end = key.period.end;
        drop(meter.slot(key.clone()));
        let kept = meter.slot({
            let mut k = key.clone();
            k.org_id = 2;
            k
        });
        meter.mark_dirty(&kept, end);
        drop(kept);
        let after = end + chrono::Duration::minutes(10);
        let batch = meter.take_dirty(after);
        assert_eq!(batch.slots.len(), 1);
        assert_eq!(
            meter.lock().len(),
            1,
            "the clean one is forgotten, the one being written is kept"
        );
        drop(batch);
        assert_eq!(meter.take_dirty(after).slots.len(), 0);
        assert_eq!(meter.lock().len(), 1, "the same minute: no second walk");
        assert_eq!(
            meter
                .take_dirty(after + chrono::Duration::minutes(1))
                .slots
                .len(),
            0
        );
        assert_eq!(
            meter.lock().len(),
            0,
            "a new minute: clean slots of ended periods are forgotten"
        );
    }

    #[test]
    fn a_slot_taken_from_while_it_leaves_the_list_is_listed_again() {
        // Requests take from the lease and list the slot while another thread prunes and settles: whenever the
        // slot owes Redis something, it must be on the list.
        let meter = Arc::new(Meter::new("t"));
        let counter = Arc::new(Mutex::new(Counter::default()));
        let slot = meter.slot(slot().counter.key().clone());
        request(
            &slot,
            &mut counter.lock().expect("model"),
            0,
            1,
            u64::MAX / 2,
        )
        .expect("admitted");
        meter.list(&slot);
        let stop = Arc::new(AtomicBool::new(false));
        let pruner = {
            let (meter, counter, slot, stop) =
                (meter.clone(), counter.clone(), slot.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    meter.prune_settled();
                    settle(&slot, &mut counter.lock().expect("model"), 0, true);
                }
            })
        };
        for _ in 0..20_000 {
            let admitted = match slot.take_local(1, u64::MAX / 2, 0) {
                Some(a) => Some(a),
                None => request(
                    &slot,
                    &mut counter.lock().expect("model"),
                    0,
                    1,
                    u64::MAX / 2,
                ),
            };
            if admitted.is_some() {
                meter.list(&slot);
            }
            let lease = slot.lease();
            let owes =
                lease.epoch >= 0 && (lease.available > 0 || lease.consumed != lease.reported);
            let listed = slot.listed.load(Ordering::Acquire);
            drop(lease);
            assert!(
                !owes || listed,
                "a slot that owes Redis is on the settle list"
            );
        }
        stop.store(true, Ordering::Relaxed);
        pruner.join().expect("pruner");
        let lease = slot.lease();
        let owes = lease.available > 0 || lease.consumed != lease.reported;
        drop(lease);
        assert_eq!(
            slot.listed.load(Ordering::Acquire),
            owes || meter.settle_list_len() == 1
        );
    }

    #[test]
    fn a_refund_applies_once_within_its_epoch() {
        let (slot, mut counter) = (slot(), Counter::default());
        let admitted = request(&slot, &mut counter, 0, 3, 1_000).expect("admitted");
        assert!(slot.refund(3, admitted.epoch));
        assert!(
            !slot.refund(3, admitted.epoch),
            "only what was consumed can be given back"
        );
        settle(&slot, &mut counter, 0, true).expect("a report");
        assert_eq!((counter.used, counter.leased), (0, 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request {
            rid: usize,
            cost: u64,
        },
        Refund {
            rid: usize,
        },
        /// A settle pass, its report delivered `twice` when the first reply is lost and the call repeated.
        Settle {
            rid: usize,
            release: bool,
            twice: bool,
        },
        Reset {
            announced_to: Vec<bool>,
        },
    }

    const REPLICAS: usize = 3;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..REPLICAS, 1u64..5).prop_map(|(rid, cost)| Op::Request { rid, cost }),
            1 => (0..REPLICAS).prop_map(|rid| Op::Refund { rid }),
            3 => (0..REPLICAS, any::<bool>(), any::<bool>())
                .prop_map(|(rid, release, twice)| Op::Settle { rid, release, twice }),
            1 => proptest::collection::vec(any::<bool>(), REPLICAS)
                .prop_map(|announced_to| Op::Reset { announced_to }),
        ]
    }

    proptest! {
        /// Several replicas on one counter, in any interleaving of requests, refunds, settles (some delivered
        /// twice) and resets (whose announcement some replicas miss): Redis never has more than the limit out,
        /// in every epoch the replicas admit, net of refunds, at most the limit, and a repeated report changes
        /// nothing.
        #[test]
        fn never_over_admits(limit in 1u64..300, ops in proptest::collection::vec(op(), 1..300)) {
            let slots: Vec<Slot> = (0..REPLICAS).map(|_| slot()).collect();
            let mut counter = Counter::default();
            let mut last: Vec<Option<(u64, Admitted)>> = vec![None; REPLICAS];
            let mut net: HashMap<i64, i64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Request { rid, cost } => {
                        if let Some(a) = request(&slots[rid], &mut counter, rid, cost, limit) {
                            *net.entry(a.epoch).or_default() += i64::try_from(cost).unwrap_or(i64::MAX);
                            last[rid] = Some((cost, a));
                        }
                    }
                    Op::Refund { rid } => {
                        if let Some((cost, a)) = last[rid].take()
                            && slots[rid].refund(cost, a.epoch)
                        {
                            *net.entry(a.epoch).or_default() -= i64::try_from(cost).unwrap_or(i64::MAX);
                        }
                    }
                    Op::Settle { rid, release, twice } => {
                        if let Some(report) = settle(&slots[rid], &mut counter, rid, release)
                            && twice
                        {
                            let before = (counter.used, counter.leased);
                            counter.apply(rid, &report);
                            prop_assert_eq!((counter.used, counter.leased), before, "a repeated report");
                        }
                    }
                    Op::Reset { announced_to } => {
                        counter.reset();
                        for (slot, heard) in slots.iter().zip(announced_to) {
                            if heard {
                                slot.forfeit();
                            }
                        }
                    }
                }
                prop_assert!(counter.used + counter.leased <= limit,
                    "used {} + leased {} > limit {limit}", counter.used, counter.leased);
                // A replica that missed a reset may still spend its old lease, but that lease was granted in the
                // old epoch, under the old epoch's limit.
                for (epoch, n) in &net {
                    prop_assert!(*n <= i64::try_from(limit).unwrap_or(i64::MAX),
                        "epoch {epoch}: {n} admitted net of refunds, limit {limit}");
                }
            }
        }
    }
}
