//! Org API keys: how they look, how they are stored, how a presented key is resolved, and how revocation
//! reaches every replica.
//!
//! A key is `tg_` followed by 43 random alphanumerics (≈256 bits). Only its SHA-256 is stored: with that much
//! entropy a slow password hash buys nothing, and a fast one keeps resolution cheap. The first characters are
//! kept in clear as a display prefix so owners can tell keys apart.
//!
//! Revocation is written to PostgreSQL first (the truth), then announced on Redis, once per revocation: an `INCR`
//! of [`revocations_epoch_key`], then a `PUBLISH` on [`revocations_channel`] of an [`Announcement`] (the key's
//! display prefix and hash, and the epoch it moved to) for replicas that are listening. A replica keeps track of
//! which moves of the epoch it heard; one that did not hear a move by the time the epoch shows the next reading
//! missed it (while disconnected) and drops its whole cache. Revoking an already revoked key announces nothing,
//! so repeats cannot make every replica re-resolve every key.

pub mod cache;

use crate::domain::OrgId;
use rand::Rng;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "tg_";
/// Random characters after the prefix.
const KEY_RANDOM_LEN: usize = 43;
/// Characters kept in clear for display (prefix included).
pub const DISPLAY_PREFIX_LEN: usize = 11;

/// A SHA-256 digest of a key.
pub type KeyHash = [u8; 32];

/// A freshly generated key: the secret is shown to its owner once and then forgotten.
pub struct GeneratedKey {
    /// The full key.
    pub secret: SecretString,
    /// What is stored.
    pub hash: KeyHash,
    /// What is displayed.
    pub display_prefix: String,
}

/// Makes a new random key.
pub fn generate() -> GeneratedKey {
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(KEY_RANDOM_LEN)
        .map(char::from)
        .collect();
    let key = format!("{KEY_PREFIX}{random}");
    GeneratedKey {
        hash: hash(&key),
        display_prefix: key[..DISPLAY_PREFIX_LEN].to_owned(),
        secret: SecretString::from(key),
    }
}

/// The stored form of a key.
pub fn hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether `s` has the shape of a Tollgate key (cheap pre-check before any lookup).
pub fn looks_like_key(s: &str) -> bool {
    s.len() == KEY_PREFIX.len() + KEY_RANDOM_LEN
        && s.starts_with(KEY_PREFIX)
        && s.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(u8::is_ascii_alphanumeric)
}

/// What a valid, unrevoked key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedKey {
    /// The key's id.
    pub key_id: Uuid,
    /// Internal id of the owning org.
    pub org_id: i64,
    /// Clerk id of the owning org.
    pub org: OrgId,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    key_hash: Vec<u8>,
    org_id: i64,
    clerk_org_id: String,
}

/// Resolves a presented key against PostgreSQL: `None` when unknown, malformed or revoked.
///
/// This is the one resolution path: the control plane calls it per request, the proxy behind its cache.
pub async fn resolve(pool: &PgPool, presented: &str) -> Result<Option<ResolvedKey>, sqlx::Error> {
    if !looks_like_key(presented) {
        return Ok(None);
    }
    let digest = hash(presented);
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.key_hash, k.org_id, o.clerk_org_id
           FROM api_keys k JOIN orgs o ON o.id = k.org_id
          WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(digest.as_slice())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    // The index lookup already matched; the constant-time comparison keeps the final decision free of
    // data-dependent timing.
    if !bool::from(row.key_hash.as_slice().ct_eq(digest.as_slice())) {
        return Ok(None);
    }
    let Ok(org) = OrgId::parse(&row.clerk_org_id) else {
        return Ok(None);
    };
    Ok(Some(ResolvedKey {
        key_id: row.id,
        org_id: row.org_id,
        org,
    }))
}

/// Records that a key was used, at most once a minute per key so a busy key does not write on every call.
pub async fn touch(pool: &PgPool, key_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
          WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')",
    )
    .bind(key_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The pub/sub channel on which revocations are announced (payload: [`Announcement::encode`]).
pub fn revocations_channel(namespace: &str) -> String {
    format!("{namespace}:keys:revoked")
}

/// The counter bumped by every announced revocation.
pub fn revocations_epoch_key(namespace: &str) -> String {
    format!("{namespace}:keys:epoch")
}

/// Whether `s` has the shape of a display prefix (`tg_` and 8 alphanumerics).
pub fn looks_like_prefix(s: &str) -> bool {
    s.len() == DISPLAY_PREFIX_LEN
        && s.starts_with(KEY_PREFIX)
        && s.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(u8::is_ascii_alphanumeric)
}

/// A revoked key: its display prefix, by which the caches hash their entries (so the key is found in one probe),
/// and its SHA-256, which identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    prefix: String,
    hash: KeyHash,
}

impl Revocation {
    /// The revocation of the key whose display prefix is `prefix` and SHA-256 `hash`; `None` if the prefix does not
    /// have a prefix's shape.
    pub fn new(prefix: &str, hash: KeyHash) -> Option<Self> {
        looks_like_prefix(prefix).then(|| Self {
            prefix: prefix.to_owned(),
            hash,
        })
    }

    /// The key's display prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key's SHA-256.
    pub fn hash(&self) -> &KeyHash {
        &self.hash
    }
}

/// A revocation as published on [`revocations_channel`]: the key, and the value its announcement moved the epoch
/// to, so a replica knows which moves of the epoch it heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The revoked key.
    pub revocation: Revocation,
    /// The epoch after this announcement's `INCR`.
    pub epoch: i64,
}

impl Announcement {
    /// The payload: `<prefix>:<hash in hex>:<epoch>`.
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            self.revocation.prefix,
            hex::encode(self.revocation.hash),
            self.epoch
        )
    }

    /// Reads a payload written by [`Announcement::encode`].
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.trim().splitn(3, ':');
        let (prefix, hash_hex, epoch) = (parts.next()?, parts.next()?, parts.next()?);
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hash_hex, &mut hash).ok()?;
        Some(Self {
            revocation: Revocation::new(prefix, hash)?,
            epoch: epoch.parse().ok()?,
        })
    }
}

/// Announces a revocation to every replica (see the module docs); returns the epoch it moved the counter to. Call
/// it once per revocation: every call moves the epoch, and every replica that hears it evicts the key.
pub async fn announce_revocation<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    namespace: &str,
    revocation: &Revocation,
) -> redis::RedisResult<i64> {
    // Two plain commands rather than MULTI: in a cluster the epoch key and the channel live on different nodes.
    // Order matters: a replica that misses the message still sees the epoch move, and the message carries the
    // value it moved to.
    let epoch: i64 = redis::cmd("INCR")
        .arg(revocations_epoch_key(namespace))
        .query_async(conn)
        .await?;
    let announcement = Announcement {
        revocation: revocation.clone(),
        epoch,
    };
    redis::cmd("PUBLISH")
        .arg(revocations_channel(namespace))
        .arg(announcement.encode())
        .query_async::<()>(conn)
        .await?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = generate();
        let s = k.secret.expose_secret();
        assert!(looks_like_key(s), "{}", k.display_prefix);
        assert_eq!(k.hash, hash(s));
        assert!(s.starts_with(&k.display_prefix));
        assert_eq!(k.display_prefix.len(), DISPLAY_PREFIX_LEN);
        assert_ne!(generate().hash, k.hash);
    }

    #[test]
    fn shape_check_rejects_near_misses() {
        let k = generate();
        let s = k.secret.expose_secret();
        assert!(!looks_like_key(&s[..s.len() - 1]));
        assert!(!looks_like_key(&format!("{s}x")));
        assert!(!looks_like_key(&s.replacen("tg_", "tk_", 1)));
        assert!(!looks_like_key(&format!(
            "tg_{}",
            "-".repeat(KEY_RANDOM_LEN)
        )));
    }

    #[test]
    fn an_announcement_reads_back_what_it_writes() {
        let k = generate();
        let revocation = Revocation::new(&k.display_prefix, k.hash).expect("a generated prefix");
        let a = Announcement {
            revocation,
            epoch: 42,
        };
        let payload = a.encode();
        let hash_hex = hex::encode(k.hash);
        assert_eq!(payload, format!("{}:{hash_hex}:42", k.display_prefix));
        assert_eq!(Announcement::parse(&payload), Some(a));
        for bad in [
            hash_hex.clone(),
            format!("{}:{hash_hex}", k.display_prefix),
            format!("tg_short:{hash_hex}:1"),
            format!("{}:abc:1", k.display_prefix),
            format!("{}:{hash_hex}:x", k.display_prefix),
            format!("{}:{hash_hex}:1:2", k.display_prefix),
        ] {
            assert_eq!(Announcement::parse(&bad), None, "{bad}");
        }
        assert!(Revocation::new("tg_abcdefg!", k.hash).is_none());
    }

    #[test]
    fn channel_names_are_namespaced() {
        assert_eq!(revocations_channel("tg"), "tg:keys:revoked");
        assert_eq!(revocations_epoch_key("t1"), "t1:keys:epoch");
    }
}
