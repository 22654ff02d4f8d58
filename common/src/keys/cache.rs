//! Resolved credentials, cached per process: the proxy and the control plane resolve a warm key or session token
//! without PostgreSQL or a signature check.
//!
//! * [`KeyCache`]: valid API keys for ten minutes, unknown ones for five seconds (a client hammering with a bad key
//!   costs one lookup per five seconds). Valid keys are found by the presented key itself, so a warm request costs
//!   one probe of a sharded hash table (`quick_cache`: a read lock and no bookkeeping queue) and no SHA-256 (the key is held in this process's memory only, as it is while the
//!   request is read; it is never logged or written anywhere); unknown ones by SHA-256, so a flood of made-up keys
//!   keeps none of them. Revocations, which name a key by its SHA-256, evict at once: [`KeyCache::follow`] listens
//!   for announcements and watches the revocation epoch (for announcements missed while disconnected), and a
//!   generation counter keeps a lookup that raced with a revocation from re-inserting the key it revoked.
//! * [`SessionCache`]: verified session tokens by SHA-256 of the token, until they expire.

use super::{KeyHash, hash, looks_like_key, resolve, revocations_channel, revocations_epoch_key};
use crate::cache::ExpiringCache;
use crate::config::RedisSettings;
use crate::domain::OrgId;
use crate::store::redis::{RedisConn, listen};
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// SHA-256 of the key, as stored and as revocations name it.
    digest: KeyHash,
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

/// Cache of resolved API keys.
pub struct KeyCache {
    valid: ExpiringCache<Box<str>, Arc<CachedKey>>,
    /// SHA-256 of unknown keys.
    unknown: ExpiringCache<KeyHash, ()>,
    generation: AtomicU64,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            valid: ExpiringCache::new(100_000, VALID_FOR),
            unknown: ExpiringCache::new(10_000, UNKNOWN_FOR),
            generation: AtomicU64::new(0),
        }
    }
}

impl KeyCache {
    /// The key behind `presented`, from the cache or PostgreSQL; `now` is this process's monotonic time (the
    /// request's start will do), against which cached entries expire.
    pub async fn resolve(
        &self,
        pg: &PgPool,
        presented: &str,
        now: Instant,
    ) -> Result<Arc<CachedKey>, ResolveError> {
        // Only valid keys are cached, so a hit needs no shape check.
        if let Some(key) = self.valid.get(presented, now) {
            return Ok(key);
        }
        if !looks_like_key(presented) {
            return Err(ResolveError::Unknown);
        }
        let digest = hash(presented);
        if self.unknown.get(&digest, now).is_some() {
            return Err(ResolveError::Unknown);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(resolved) = resolve(pg, presented).await? else {
            self.unknown.insert(digest, (), now);
            return Err(ResolveError::Unknown);
        };
        let key = Arc::new(CachedKey {
            key_id: resolved.key_id,
            digest,
            org: Arc::new(OrgRef::new(resolved.org_id, resolved.org)),
            touched_at: AtomicI64::new(i64::MIN / 2),
        });
        // A revocation that arrived while PostgreSQL answered may concern this very key: do not cache.
        if self.generation.load(Ordering::Acquire) == generation {
            self.valid.insert(presented.into(), Arc::clone(&key), now);
        }
        Ok(key)
    }

    /// Forgets one key. The cache is searched for it (revocations are rare; lookups must not hash).
    pub fn forget(&self, digest: &KeyHash) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.valid.retain(|_, key| key.digest != *digest);
    }

    /// Forgets one key, by its hash hex-encoded as announced (anything else forgets every key).
    pub fn revoke(&self, hash_hex: &str) {
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(hash_hex.trim(), &mut digest).is_ok() {
            self.forget(&digest);
        } else {
            self.revoke_all();
        }
    }

    /// Forgets every key (after missing announcements).
    pub fn revoke_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.valid.clear();
    }

    /// How many valid keys are cached.
    pub fn len(&self) -> u64 {
        self.valid.len() as u64
    }

    /// Whether no valid key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the cache in step with revocations until `shutdown` resolves: listens for announcements on the
    /// revocation channel (forgetting every key after a reconnect, since announcements made meanwhile are lost)
    /// and reads the revocation epoch every `epoch_every`, forgetting every key when it moved unannounced.
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
            || self.revoke_all(),
            |_, payload| self.revoke(payload),
        );
        let epoch = async {
            let mut conn: Option<RedisConn> = None;
            let mut last = None;
            let mut ticker = tokio::time::interval(epoch_every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if conn.is_none() {
                    conn = RedisConn::connect(settings).await.ok();
                }
                if let Some(c) = conn.as_mut()
                    && let Err(e) = self.check_epoch(c, &settings.namespace, &mut last).await
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

    /// Reads the revocation epoch; forgets every key when it differs from `last` (the previous reading).
    pub async fn check_epoch(
        &self,
        conn: &mut RedisConn,
        namespace: &str,
        last: &mut Option<Option<i64>>,
    ) -> redis::RedisResult<()> {
        let epoch: Option<i64> = redis::cmd("GET")
            .arg(revocations_epoch_key(namespace))
            .query_async(conn)
            .await?;
        if last.is_some_and(|l| l != epoch) {
            self.revoke_all();
        }
        *last = Some(epoch);
        Ok(())
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

    fn cached(cache: &KeyCache, presented: &str, id: i64) {
        let key = Arc::new(CachedKey {
            key_id: Uuid::nil(),
            digest: hash(presented),
            org: Arc::new(OrgRef::new(id, OrgId::parse("org_a").expect("org"))),
            touched_at: AtomicI64::new(0),
        });
        cache.valid.insert(presented.into(), key, Instant::now());
    }

    #[tokio::test]
    async fn a_cached_key_is_used_until_it_expires() {
        let cache = KeyCache::default();
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
    fn a_revocation_by_hash_forgets_exactly_that_key() {
        let cache = KeyCache::default();
        cached(&cache, "tg_one", 1);
        cached(&cache, "tg_two", 2);
        cache.revoke(&hex::encode(hash("tg_one")));
        assert!(
            cache.valid.get("tg_one", Instant::now()).is_none(),
            "the revoked key is gone"
        );
        assert_eq!(
            cache.valid.get("tg_two", Instant::now()).map(|k| k.org.id),
            Some(2),
            "the other stays"
        );
        cache.revoke("not hex");
        assert!(
            cache.valid.get("tg_two", Instant::now()).is_none(),
            "an unreadable announcement forgets every key"
        );
    }

    #[test]
    fn a_key_is_touched_at_most_once_a_minute() {
        let key = CachedKey {
            key_id: Uuid::nil(),
            digest: hash("tg_x"),
            org: Arc::new(OrgRef::new(1, OrgId::parse("org_a").expect("org"))),
            touched_at: AtomicI64::new(i64::MIN / 2),
        };
        assert!(key.due_for_touch(1_000));
        assert!(!key.due_for_touch(1_000));
        assert!(!key.due_for_touch(1_059));
        assert!(key.due_for_touch(1_060));
    }
}
