//! A bounded concurrent cache whose entries expire a fixed time after they were stored: `quick_cache` (a sharded
//! table, read-locked on a hit, no bookkeeping queue) with the expiry kept beside each value and compared on read.
//! Callers pass the current instant, so a request that already read the clock does not read it again.

use quick_cache::Equivalent;
use quick_cache::sync::Cache;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Entries live `ttl` after they were inserted, at most `capacity` of them.
pub struct ExpiringCache<K, V> {
    entries: Cache<K, (V, Instant)>,
    ttl: Duration,
}

impl<K, V> ExpiringCache<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// Room for about `capacity` entries, each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: Cache::new(capacity),
            ttl,
        }
    }

    /// The value under `key` if it has not expired at `now`; an expired one is dropped.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let (value, until) = self.entries.get(key)?;
        if now < until {
            Some(value)
        } else {
            self.entries.remove(key);
            None
        }
    }

    /// Stores `value` under `key` until `now + ttl`.
    pub fn insert(&self, key: K, value: V, now: Instant) {
        self.entries.insert(key, (value, now + self.ttl));
    }

    /// Drops `key`.
    pub fn remove<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.entries.remove(key);
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        self.entries.retain(|k, (v, _)| keep(k, v));
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// The first unexpired value at `now` that `pred` accepts (a scan: for diagnostics, not hot paths).
    pub fn find(&self, now: Instant, mut pred: impl FnMut(&V) -> bool) -> Option<V> {
        self.entries
            .iter()
            .find(|(_, (v, until))| now < *until && pred(v))
            .map(|(_, (v, _))| v)
    }

    /// How many entries are stored, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Turns for cold look-ups: callers that miss the same key (sharded by a number derived from it) take turns, so a
/// burst of requests for something not cached yet makes one query — the others find it cached when their turn
/// comes — and one client's burst cannot take the database pool from everyone else.
pub struct ColdTurns(Box<[tokio::sync::Mutex<()>]>);

impl ColdTurns {
    /// Shards enough that unrelated misses rarely wait for each other.
    pub const SHARDS: usize = 64;

    /// The turns.
    pub fn new() -> Self {
        Self(
            (0..Self::SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        )
    }

    /// Waits for the turn of the key numbered `n`; look the key up in the cache again once it is held.
    pub async fn take(&self, n: u64) -> tokio::sync::MutexGuard<'_, ()> {
        let shard = usize::try_from(n % Self::SHARDS as u64).unwrap_or(0);
        self.0[shard].lock().await
    }
}

impl Default for ColdTurns {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_its_ttl_and_is_dropped_after() {
        let cache = ExpiringCache::<&str, u32>::new(10, Duration::from_secs(5));
        let t0 = Instant::now();
        cache.insert("a", 1, t0);
        assert_eq!(cache.get("a", t0 + Duration::from_secs(4)), Some(1));
        assert_eq!(cache.get("a", t0 + Duration::from_secs(5)), None);
        assert!(cache.is_empty(), "the expired entry was dropped");
    }

    #[test]
    fn retain_find_and_clear_see_the_values() {
        let cache = ExpiringCache::<u8, u32>::new(10, Duration::from_secs(5));
        let t0 = Instant::now();
        for k in 0..4 {
            cache.insert(k, u32::from(k) * 10, t0);
        }
        cache.retain(|_, v| *v != 20);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.find(t0, |v| *v == 30), Some(30));
        assert_eq!(cache.find(t0 + Duration::from_secs(6), |v| *v == 30), None);
        cache.clear();
        assert!(cache.is_empty());
    }
}
