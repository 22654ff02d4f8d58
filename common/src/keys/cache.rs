//! Resolved credentials, cached per process: the proxy and the control plane resolve a warm key or session token
//! without PostgreSQL or a signature check.
//!
//! * [`KeyCache`]: valid API keys for ten minutes, unknown ones for five seconds (a client hammering with a bad key
//!   costs one lookup per five seconds). Valid keys are found by the presented key itself, so a warm request costs
//!   one probe of a sharded hash table (`quick_cache`: a read lock and no bookkeeping queue) and no SHA-256 (the
//!   key is held in this process's memory only, as it is while the request is read; it is never logged or written
//!   anywhere); unknown ones by SHA-256, so a flood of made-up keys keeps none of them.
//! * [`SessionCache`]: verified session tokens by SHA-256 of the token, until they expire.
//!
//! # Revocations
//!
//! A revocation names a key by its display prefix and SHA-256 ([`Revocation`]). Valid entries are hashed by the
//! display prefix alone, which the presented key starts with and the announcement carries, and compared by the
//! whole key (a request) or by the SHA-256 (a revocation): either finds the entry in one probe, and nothing is
//! scanned. [`KeyCache::follow`] applies announcements and guards against missed ones: each announcement moves
//! the revocation epoch once and carries the value it moved to, so a replica whose readings of the epoch show a
//! move it never heard has missed an announcement and drops every key (a flush, see [`EpochTracker`]); so does one
//! whose subscription was made again. A generation counter keeps a lookup that raced with a revocation from
//! leaving the key it revoked in the cache.

use super::{
    Announcement, DISPLAY_PREFIX_LEN, KeyHash, Revocation, hash, looks_like_key, resolve,
    revocations_channel, revocations_epoch_key,
};
use crate::cache::ExpiringCache;
use crate::config::RedisSettings;
use crate::domain::OrgId;
use crate::store::redis::{RedisConn, listen};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use quick_cache::Equivalent;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// An org as a credential names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRef {
    /// Internal id.
    pub id: i64,
    /// Clerk id.
    pub org: OrgId,
    /// The Clerk id as a header value, built once (the proxy sends it upstream on every request).
    pub header: http::HeaderValue,
}

impl OrgRef {
    /// The org with internal id `id` and Clerk id `org`.
    pub fn new(id: i64, org: OrgId) -> Self {
        // An `OrgId` is `org_` and letters, digits and `_`: always a valid header value.
        let header = http::HeaderValue::from_str(org.as_str())
            .unwrap_or_else(|_| http::HeaderValue::from_static(""));
        Self { id, org, header }
    }
}

/// A valid key, as cached.
#[derive(Debug)]
pub struct CachedKey {
    /// The key's id.
    pub key_id: Uuid,
    /// The org it belongs to.
    pub org: Arc<OrgRef>,
    /// When its use was last recorded (Unix seconds), so it is recorded at most once a minute per process.
    touched_at: AtomicI64,
}

impl CachedKey {
    /// Whether the key's use should be recorded now: true at most once a minute (`keys::touch` also limits
    /// the write per minute across processes).
    pub fn due_for_touch(&self, now_secs: i64) -> bool {
        let last = self.touched_at.load(Ordering::Relaxed);
        now_secs - last >= 60
            && self
                .touched_at
                .compare_exchange(last, now_secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Why a key does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Unknown, malformed or revoked.
    #[error("the API key is invalid or revoked")]
    Unknown,
    /// PostgreSQL could not be asked.
    #[error("cannot resolve an API key: {0}")]
    Database(#[from] sqlx::Error),
}

/// How long a valid key is used without asking PostgreSQL (revocations evict at once; this bounds a missed one).
const VALID_FOR: Duration = Duration::from_secs(600);
/// How long an unknown key is refused without asking PostgreSQL.
const UNKNOWN_FOR: Duration = Duration::from_secs(5);
/// How long a verified session token is used at most, whatever its own expiry.
const SESSION_FOR: Duration = Duration::from_secs(300);
/// Unknown keys kept at most.
const UNKNOWN_CAPACITY: usize = 10_000;

// === Entry names ===

/// What a valid entry is hashed by: the key's display prefix (the whole input if it is shorter, which no cached
/// key is). The presented key and a revocation both have it, so both find the entry in one probe.
fn bucket(key: &str) -> &str {
    key.get(..DISPLAY_PREFIX_LEN).unwrap_or(key)
}

/// A valid entry's name: the key and its SHA-256, equal when the keys are.
#[derive(Clone)]
struct EntryName {
    key: Box<str>,
    digest: KeyHash,
}

impl PartialEq for EntryName {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for EntryName {}

impl Hash for EntryName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        bucket(&self.key).hash(state);
    }
}

/// A request's look-up: the whole presented key must match.
struct Presented<'a>(&'a str);

impl Hash for Presented<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        bucket(self.0).hash(state);
    }
}

impl Equivalent<EntryName> for Presented<'_> {
    fn equivalent(&self, name: &EntryName) -> bool {
        *name.key == *self.0
    }
}

/// A revocation's look-up: the SHA-256 must match.
struct Revoked<'a>(&'a Revocation);

impl Hash for Revoked<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        bucket(self.0.prefix()).hash(state);
    }
}

impl Equivalent<EntryName> for Revoked<'_> {
    fn equivalent(&self, name: &EntryName) -> bool {
        name.digest == *self.0.hash()
    }
}

// === KeyCacheMetrics ===

/// Look-up outcomes, the `outcome` label of `<prefix>_key_resolutions_total`.
const OUTCOMES: [&str; 3] = ["valid", "unknown", "error"];

/// Why the whole cache was dropped, the `reason` label of `<prefix>_key_cache_flushes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// The subscription was made again: announcements made meanwhile are lost.
    Reconnect,
    /// The epoch moved by more than the announcements heard.
    Missed,
    /// An announcement could not be read.
    Unreadable,
}

impl Flush {
    const LABELS: [&str; 3] = ["reconnect", "missed", "unreadable"];

    fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// The key cache's counters, registered by each binary under its own prefix (`tollgate_proxy`, `tollgate_cp`):
/// `<prefix>_key_resolutions_total{outcome}` (keys looked up in PostgreSQL: `valid`, `unknown`, `error`),
/// `<prefix>_key_cache_flushes_total{reason}` (`reconnect`, `missed`, `unreadable`) and
/// `<prefix>_revocation_announcements_total` (revocations heard).
#[derive(Clone)]
pub struct KeyCacheMetrics {
    resolutions: [IntCounter; 3],
    flushes: [IntCounter; 3],
    announcements: IntCounter,
}

impl KeyCacheMetrics {
    /// Creates the counters (every series exists from the start) and registers them into `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let resolutions = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_key_resolutions_total"),
                "API keys looked up in PostgreSQL (cache misses), by outcome.",
            ),
            &["outcome"],
        )?;
        let flushes = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_key_cache_flushes_total"),
                "Times the whole API key cache was dropped, by reason.",
            ),
            &["reason"],
        )?;
        let announcements = IntCounter::new(
            format!("{prefix}_revocation_announcements_total"),
            "Key revocations announced by the control plane and heard by this replica.",
        )?;
        registry.register(Box::new(resolutions.clone()))?;
        registry.register(Box::new(flushes.clone()))?;
        registry.register(Box::new(announcements.clone()))?;
        Ok(Self {
            resolutions: OUTCOMES.map(|o| resolutions.with_label_values(&[o])),
            flushes: Flush::LABELS.map(|r| flushes.with_label_values(&[r])),
            announcements,
        })
    }
}

// === KeyCache ===

/// Cache of resolved API keys.
pub struct KeyCache {
    valid: ExpiringCache<EntryName, Arc<CachedKey>>,
    /// SHA-256 of unknown keys.
    unknown: ExpiringCache<KeyHash, ()>,
    /// Bumped by every eviction, before it looks for what it evicts.
    generation: AtomicU64,
    /// Which moves of the revocation epoch were heard (touched by announcements and epoch readings only).
    epochs: Mutex<EpochTracker>,
    metrics: KeyCacheMetrics,
    /// Cold look-ups of one key take turns: a burst of requests with a key that is not cached yet makes one query.
    cold: crate::cache::ColdTurns,
}

impl KeyCache {
    /// An empty cache of at most `capacity` valid keys (`TOLLGATE_KEY_CACHE_CAPACITY`; at the bound a key is
    /// evicted and its next request looks it up again), counting into `metrics`.
    pub fn new(capacity: usize, metrics: KeyCacheMetrics) -> Self {
        Self {
            valid: ExpiringCache::new(capacity.max(1), VALID_FOR),
            unknown: ExpiringCache::new(UNKNOWN_CAPACITY, UNKNOWN_FOR),
            generation: AtomicU64::new(0),
            epochs: Mutex::default(),
            metrics,
            cold: crate::cache::ColdTurns::new(),
        }
    }

    /// The key behind `presented`, from the cache or PostgreSQL; `now` is this process's monotonic time (the
    /// request's start will do), against which cached entries expire.
    pub async fn resolve(
        &self,
        pg: &PgPool,
        presented: &str,
        now: Instant,
    ) -> Result<Arc<CachedKey>, ResolveError> {
        // Only valid keys are cached, so a hit needs no shape check.
        if let Some(key) = self.valid.get(&Presented(presented), now) {
            return Ok(key);
        }
        if !looks_like_key(presented) {
            return Err(ResolveError::Unknown);
        }
        let digest = hash(presented);
        if self.unknown.get(&digest, now).is_some() {
            return Err(ResolveError::Unknown);
        }
        let _turn = self.cold.take(u64::from(digest[0])).await;
        // The request before this one in the shard may have just looked the same key up.
        if let Some(key) = self.valid.get(&Presented(presented), now) {
            return Ok(key);
        }
        if self.unknown.get(&digest, now).is_some() {
            return Err(ResolveError::Unknown);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let [valid, unknown, error] = &self.metrics.resolutions;
        let resolved = match resolve(pg, presented).await {
            Ok(Some(resolved)) => resolved,
            Ok(None) => {
                unknown.inc();
                self.unknown.insert(digest, (), now);
                return Err(ResolveError::Unknown);
            }
            Err(e) => {
                error.inc();
                return Err(e.into());
            }
        };
        valid.inc();
        let key = Arc::new(CachedKey {
            key_id: resolved.key_id,
            org: Arc::new(OrgRef::new(resolved.org_id, resolved.org)),
            touched_at: AtomicI64::new(i64::MIN / 2),
        });
        self.admit(presented, digest, Arc::clone(&key), generation, now);
        Ok(key)
    }

    /// Caches a key PostgreSQL found valid, unless an eviction since `generation` (read before asking) may concern
    /// it: a revocation that arrived while PostgreSQL answered may name this very key, and may have looked for it
    /// before it was inserted. Insert, then check: an eviction bumps the generation before it looks, so either it
    /// found the entry or the generation moved here (both sides are sequentially consistent).
    fn admit(
        &self,
        presented: &str,
        digest: KeyHash,
        key: Arc<CachedKey>,
        generation: u64,
        now: Instant,
    ) {
        let name = EntryName {
            key: presented.into(),
            digest,
        };
        self.valid.insert(name, key, now);
        if self.generation.load(Ordering::SeqCst) != generation {
            self.valid.remove(&Presented(presented));
        }
    }

    /// Forgets one key: one probe.
    pub fn forget(&self, revocation: &Revocation) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.valid.remove(&Revoked(revocation));
    }

    /// Applies an announcement from the revocation channel: forgets the key it names (an unreadable one forgets
    /// every key).
    pub fn announced(&self, payload: &str) {
        self.metrics.announcements.inc();
        match Announcement::parse(payload) {
            Some(announcement) => {
                self.forget(&announcement.revocation);
                self.epochs().heard(announcement.epoch);
            }
            None => {
                tracing::warn!("unreadable revocation announcement; dropping every cached key");
                self.flush(Flush::Unreadable);
            }
        }
    }

    /// Forgets every key; the next epoch reading starts afresh (whatever was unheard is flushed away).
    pub fn flush(&self, reason: Flush) {
        self.epochs().restart();
        self.drop_all(reason);
    }

    fn drop_all(&self, reason: Flush) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.valid.clear();
        self.metrics.flushes[reason as usize].inc();
        tracing::info!(reason = reason.label(), "key cache flushed");
    }

    /// How many valid keys are cached.
    pub fn len(&self) -> u64 {
        self.valid.len() as u64
    }

    /// Whether no valid key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the cache in step with revocations until `shutdown` resolves: applies announcements on the
    /// revocation channel (flushing after the subscription is made again, since announcements made meanwhile are
    /// lost) and reads the revocation epoch every `epoch_every`, flushing when it shows a move whose announcement
    /// was not heard (see [`EpochTracker`]).
    pub async fn follow(
        &self,
        settings: &RedisSettings,
        epoch_every: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let channel = revocations_channel(&settings.namespace);
        let announcements = listen(
            settings,
            std::slice::from_ref(&channel),
            || self.flush(Flush::Reconnect),
            |_, payload| self.announced(payload),
        );
        let epoch = async {
            let mut conn: Option<RedisConn> = None;
            let mut ticker = tokio::time::interval(epoch_every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if conn.is_none() {
                    conn = RedisConn::connect(settings).await.ok();
                }
                if let Some(c) = conn.as_mut()
                    && let Err(e) = self.check_epoch(c, &settings.namespace).await
                {
                    tracing::debug!(error = %e, "cannot read the revocation epoch");
                }
            }
        };
        tokio::select! {
            () = announcements => {}
            () = epoch => {}
            () = shutdown => {}
        }
    }

    /// Reads the revocation epoch and flushes when announcements were missed (see [`EpochTracker`]).
    pub async fn check_epoch(
        &self,
        conn: &mut RedisConn,
        namespace: &str,
    ) -> redis::RedisResult<()> {
        let epoch: Option<i64> = redis::cmd("GET")
            .arg(revocations_epoch_key(namespace))
            .query_async(conn)
            .await?;
        let missed = self.epochs().observe(epoch.unwrap_or(0));
        if missed {
            // The reading just taken is already the tracker's new start.
            self.drop_all(Flush::Missed);
        }
        Ok(())
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, EpochTracker> {
        // The tracker is consistent after every statement, so a panic elsewhere leaves nothing half-done.
        self.epochs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Moves of the epoch heard out of order kept at most (beyond, the gap before them counts as missed).
const AHEAD_MAX: usize = 1024;

/// Which moves of the revocation epoch a replica heard, and whether it missed any.
///
/// Every announcement moves the epoch once (`INCR`), then is published with the value it moved to. A reading of the
/// epoch can land between the two, so a move the reading shows but the replica has not heard may be in flight; it
/// must have been heard by the next reading, an interval later. Missed: a move an earlier reading showed that is
/// still unheard, or an epoch that went back (Redis lost it). A missed announcement is thus noticed at the second
/// reading after it, an announcement in flight never flushes, and new announcements heard meanwhile do not hide an
/// old one missed (the moves are told apart, not counted). Moves heard out of order (two control planes announcing
/// at once) wait beside the gap before them.
#[derive(Debug, Default)]
pub struct EpochTracker {
    /// The previous reading; `None` before the first one and after a flush.
    last: Option<i64>,
    /// The first move not heard: every one before it was heard or forgiven by a flush.
    next: i64,
    /// Moves after `next` already heard.
    ahead: BTreeSet<i64>,
}

impl EpochTracker {
    /// An announcement that moved the epoch to `epoch` was heard.
    pub fn heard(&mut self, epoch: i64) {
        if epoch == self.next {
            self.next = self.next.saturating_add(1);
            self.skip_heard();
        } else if epoch > self.next && self.ahead.len() < AHEAD_MAX {
            self.ahead.insert(epoch);
        }
    }

    /// Takes a reading of the epoch. True when announcements were missed: the caller flushes, and this reading is
    /// the new start.
    pub fn observe(&mut self, epoch: i64) -> bool {
        let missed = match self.last {
            None => false,
            Some(previous) if epoch < previous => {
                // A new count: what was heard of the old one means nothing.
                self.ahead.clear();
                true
            }
            Some(previous) => self.next <= previous,
        };
        if missed || self.last.is_none() {
            self.next = epoch.saturating_add(1);
            self.ahead.retain(|&heard| heard > epoch);
            self.skip_heard();
        }
        self.last = Some(epoch);
        missed
    }

    /// Forgets what was unheard (after a flush): the next reading is a new start.
    pub fn restart(&mut self) {
        self.last = None;
    }

    fn skip_heard(&mut self) {
        while self.ahead.remove(&self.next) {
            self.next = self.next.saturating_add(1);
        }
    }
}

/// Verified session tokens by SHA-256 of the token, until they expire (and for five minutes at most): an RS256
/// verification costs tens of microseconds, and a browser sends the same token on every call of its minute-long
/// life.
pub struct SessionCache<V> {
    /// Each value with its token's own expiry (Unix seconds).
    verified: ExpiringCache<KeyHash, (V, i64)>,
}

impl<V: Clone + Send + Sync + 'static> Default for SessionCache<V> {
    fn default() -> Self {
        Self {
            verified: ExpiringCache::new(100_000, SESSION_FOR),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> SessionCache<V> {
    /// What an already verified, unexpired token stands for.
    pub fn get(&self, token_hash: &KeyHash, now_secs: i64) -> Option<V> {
        self.verified
            .get(token_hash, Instant::now())
            .and_then(|(v, expires_at)| (now_secs < expires_at).then_some(v))
    }

    /// What `token` stands for: from the cache, or from `verify` (the value and the token's expiry, Unix seconds),
    /// which is then remembered. A failed verification is not cached.
    pub async fn get_or_verify<E, Fut>(
        &self,
        token: &str,
        now_secs: i64,
        verify: impl FnOnce() -> Fut,
    ) -> Result<V, E>
    where
        Fut: Future<Output = Result<(V, i64), E>>,
    {
        let token_hash = hash(token);
        if let Some(value) = self.get(&token_hash, now_secs) {
            return Ok(value);
        }
        let (value, expires_at) = verify().await?;
        self.insert(token_hash, value.clone(), expires_at);
        Ok(value)
    }

    /// Remembers a verified token until `expires_at` (Unix seconds).
    pub fn insert(&self, token_hash: KeyHash, value: V, expires_at: i64) {
        self.verified
            .insert(token_hash, (value, expires_at), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_session_is_used_only_until_it_expires() {
        let cache = SessionCache::<u32>::default();
        let token = hash("header.claims.signature");
        cache.insert(token, 7, 1_000);
        assert_eq!(cache.get(&token, 999), Some(7));
        assert_eq!(cache.get(&token, 1_000), None);
        assert_eq!(cache.get(&hash("another"), 0), None);
    }

    #[test]
    fn a_session_is_verified_once_and_a_failure_is_not_remembered() {
        use futures_util::FutureExt;
        let cache = SessionCache::<u32>::default();
        let calls = std::cell::Cell::new(0);
        let verify = |outcome: Result<(u32, i64), &'static str>| {
            calls.set(calls.get() + 1);
            async move { outcome }
        };
        let lookup = |outcome| {
            cache
                .get_or_verify("h.c.s", 10, || verify(outcome))
                .now_or_never()
                .expect("no I/O")
        };
        assert_eq!(lookup(Err("bad")), Err("bad"));
        assert_eq!(lookup(Ok((7, 1_000))), Ok(7), "the failure was not cached");
        assert_eq!(lookup(Err("not called")), Ok(7), "the success was");
        assert_eq!(calls.get(), 2);
    }

    use crate::keys::generate;
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    fn cache() -> KeyCache {
        KeyCache::new(
            1000,
            KeyCacheMetrics::register(&Registry::new(), "test").expect("metrics"),
        )
    }

    /// Caches `presented` as a valid key of org `id`; returns its revocation (if it has a key's shape).
    fn cached(cache: &KeyCache, presented: &str, id: i64) -> Option<Revocation> {
        let key = Arc::new(CachedKey {
            key_id: Uuid::nil(),
            org: Arc::new(OrgRef::new(id, OrgId::parse("org_a").expect("org"))),
            touched_at: AtomicI64::new(0),
        });
        let name = EntryName {
            key: presented.into(),
            digest: hash(presented),
        };
        cache.valid.insert(name, key, Instant::now());
        Revocation::new(bucket(presented), hash(presented))
    }

    fn org_of(cache: &KeyCache, presented: &str) -> Option<i64> {
        cache
            .valid
            .get(&Presented(presented), Instant::now())
            .map(|k| k.org.id)
    }

    fn announcement(revocation: &Revocation, epoch: i64) -> String {
        Announcement {
            revocation: revocation.clone(),
            epoch,
        }
        .encode()
    }

    #[tokio::test]
    async fn a_cached_key_is_used_until_it_expires() {
        let cache = cache();
        // Never connected to: a hit must not need it, and the expired key below fails its shape check first.
        let pg =
            sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("lazy pool");
        cached(&cache, "tg_one", 1);
        let now = Instant::now();
        let hit = cache.resolve(&pg, "tg_one", now).await.expect("cached");
        assert_eq!(hit.org.id, 1);
        let later = now + VALID_FOR + Duration::from_secs(1);
        assert!(
            matches!(
                cache.resolve(&pg, "tg_one", later).await,
                Err(ResolveError::Unknown)
            ),
            "an expired entry is not used"
        );
        assert!(cache.valid.is_empty(), "and is dropped");
    }

    #[test]
    fn a_revocation_forgets_exactly_that_key_even_beside_one_of_the_same_prefix() {
        let cache = cache();
        let one = generate().secret.expose_secret().to_owned();
        // Same display prefix, so the same bucket: only the hash tells them apart.
        let twin = format!("{}{}", &one[..DISPLAY_PREFIX_LEN], "Z".repeat(35));
        let other = generate().secret.expose_secret().to_owned();
        let revoked = cached(&cache, &one, 1).expect("a key");
        cached(&cache, &twin, 2);
        cached(&cache, &other, 3);
        cache.announced(&announcement(&revoked, 1));
        assert_eq!(org_of(&cache, &one), None, "the revoked key is gone");
        assert_eq!(org_of(&cache, &twin), Some(2), "its twin stays");
        assert_eq!(org_of(&cache, &other), Some(3), "the other stays");
        assert_eq!(cache.metrics.announcements.get(), 1);
        assert!(cache.metrics.flushes.iter().all(|f| f.get() == 0));
    }

    /// A look-up whose PostgreSQL answer predates a revocation racing with it never leaves the key cached, in
    /// whichever order the insert and the eviction run.
    #[test]
    fn a_lookup_racing_a_revocation_never_leaves_the_key_cached() {
        let cache = cache();
        let presented = generate().secret.expose_secret().to_owned();
        let digest = hash(&presented);
        let revocation = Revocation::new(bucket(&presented), digest).expect("a key");
        let value = || {
            Arc::new(CachedKey {
                key_id: Uuid::nil(),
                org: Arc::new(OrgRef::new(1, OrgId::parse("org_a").expect("org"))),
                touched_at: AtomicI64::new(0),
            })
        };
        for round in 0..10_000 {
            let generation = cache.generation.load(Ordering::SeqCst);
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                s.spawn(|| {
                    barrier.wait();
                    cache.admit(&presented, digest, value(), generation, Instant::now());
                });
                s.spawn(|| {
                    barrier.wait();
                    cache.forget(&revocation);
                });
            });
            assert_eq!(org_of(&cache, &presented), None, "round {round}");
        }
        // Without a revocation the key is cached.
        let generation = cache.generation.load(Ordering::SeqCst);
        cache.admit(&presented, digest, value(), generation, Instant::now());
        assert_eq!(org_of(&cache, &presented), Some(1));
    }

    #[test]
    fn an_unreadable_announcement_flushes_and_is_counted() {
        let cache = cache();
        let key = generate().secret.expose_secret().to_owned();
        let revocation = cached(&cache, &key, 1).expect("a key");
        cache.announced(&hex::encode(revocation.hash()));
        assert_eq!(org_of(&cache, &key), None);
        assert_eq!(cache.metrics.flushes[Flush::Unreadable as usize].get(), 1);
        assert_eq!(cache.metrics.announcements.get(), 1);
    }

    #[test]
    fn an_announcement_in_flight_at_a_reading_is_not_missed() {
        let mut t = EpochTracker::default();
        assert!(!t.observe(0), "the first reading is the start");
        // Moved to 1, read, then heard.
        assert!(!t.observe(1));
        t.heard(1);
        assert!(!t.observe(1));
        // Heard before the reading.
        t.heard(2);
        assert!(!t.observe(2));
    }

    #[test]
    fn a_missed_announcement_flushes_at_the_second_reading_after_it() {
        let mut t = EpochTracker::default();
        assert!(!t.observe(5));
        // The epoch moved to 6 and nobody heard it.
        assert!(!t.observe(6), "may be in flight");
        assert!(t.observe(6), "an interval later it was missed");
        assert!(!t.observe(6), "the flush was the new start");
    }

    #[test]
    fn announcements_heard_later_do_not_hide_one_missed() {
        let mut t = EpochTracker::default();
        assert!(!t.observe(0));
        // 1 is lost; 2 and 3 are heard, one per interval.
        t.heard(2);
        assert!(!t.observe(2));
        t.heard(3);
        assert!(t.observe(3), "1 is still unheard");
    }

    #[test]
    fn announcements_heard_out_of_order_are_all_heard() {
        let mut t = EpochTracker::default();
        assert!(!t.observe(0));
        t.heard(2);
        assert!(!t.observe(2));
        t.heard(1);
        assert!(!t.observe(2));
        t.heard(3);
        assert!(!t.observe(3));
        assert!(!t.observe(3));
    }

    #[test]
    fn an_epoch_that_went_back_flushes() {
        let mut t = EpochTracker::default();
        assert!(!t.observe(7));
        assert!(t.observe(0), "Redis lost the count");
        t.heard(1);
        assert!(!t.observe(1));
        assert!(!t.observe(1));
    }

    #[test]
    fn a_flush_forgives_what_was_unheard() {
        let cache = cache();
        assert!(!cache.epochs().observe(0));
        assert!(!cache.epochs().observe(1), "1 unheard");
        cache.flush(Flush::Reconnect);
        assert!(!cache.epochs().observe(1), "a new start");
        assert!(!cache.epochs().observe(1));
        assert_eq!(cache.metrics.flushes[Flush::Reconnect as usize].get(), 1);
    }

    /// What becomes of one announcement.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fate {
        /// Heard before the next reading.
        Prompt,
        /// Heard after the next reading, before the one after.
        Late,
        Lost,
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![Just(Fate::Prompt), Just(Fate::Late), Just(Fate::Lost)]
    }

    proptest! {
        /// Intervals of announcements, each followed by a reading: no flush while every announcement is heard within
        /// an interval of its reading; the first one lost flushes at the second reading after it, not before.
        #[test]
        fn the_tracker_flushes_exactly_for_lost_announcements(
            intervals in prop::collection::vec(prop::collection::vec(fate(), 0..4), 1..12),
            seed in any::<u64>(),
        ) {
            let mut t = EpochTracker::default();
            prop_assert!(!t.observe(0));
            let mut epoch = 0i64;
            let mut late: Vec<i64> = Vec::new();
            let first_lost = intervals.iter().position(|i| i.contains(&Fate::Lost));
            for (n, interval) in intervals.iter().enumerate() {
                let mut heard = std::mem::take(&mut late);
                for fate in interval {
                    epoch += 1;
                    match fate {
                        Fate::Prompt => heard.push(epoch),
                        Fate::Late => late.push(epoch),
                        Fate::Lost => {}
                    }
                }
                // Any order: announcers race.
                let k = heard.len().max(1);
                heard.rotate_left(usize::try_from(seed % k as u64).unwrap_or(0));
                for e in heard {
                    t.heard(e);
                }
                let flushed = t.observe(epoch);
                match first_lost {
                    Some(lost) if n == lost + 1 => {
                        prop_assert!(flushed, "reading {n} misses interval {lost}'s announcement");
                        return Ok(());
                    }
                    _ => prop_assert!(!flushed, "reading {n} flushed with nothing missed"),
                }
            }
        }
    }

    #[test]
    fn a_key_is_touched_at_most_once_a_minute() {
        let key = CachedKey {
            key_id: Uuid::nil(),
            org: Arc::new(OrgRef::new(1, OrgId::parse("org_a").expect("org"))),
            touched_at: AtomicI64::new(i64::MIN / 2),
        };
        assert!(key.due_for_touch(1_000));
        assert!(!key.due_for_touch(1_000));
        assert!(!key.due_for_touch(1_059));
        assert!(key.due_for_touch(1_060));
    }
}
