//! Org API keys: how they look, how they are stored, how a presented key is resolved, and how revocation
//! reaches every replica.
//!
//! A key is `tg_` followed by 43 random alphanumerics (≈256 bits). Only its SHA-256 is stored: with that much
//! entropy a slow password hash buys nothing, and a fast one keeps resolution cheap. The first characters are
//! kept in clear as a display prefix so owners can tell keys apart.
//!
//! Revocation is written to PostgreSQL first (the truth), then announced on Redis: a `PUBLISH` on
//! [`revocations_channel`] carrying the key's hash for replicas that are listening, and an `INCR` of
//! [`revocations_epoch_key`] for replicas that were disconnected when the message went out and so must drop
//! their whole cache when they notice the epoch moved. Both steps are idempotent, so a failed announce is
//! retried by revoking again.

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

/// The pub/sub channel on which revoked key hashes (hex) are announced.
pub fn revocations_channel(namespace: &str) -> String {
    format!("{namespace}:keys:revoked")
}

/// The counter bumped on every revocation.
pub fn revocations_epoch_key(namespace: &str) -> String {
    format!("{namespace}:keys:epoch")
}

/// Announces a revocation to every replica (see the module docs).
pub async fn announce_revocation<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    namespace: &str,
    hash: &KeyHash,
) -> redis::RedisResult<()> {
    // Two plain commands rather than MULTI: in a cluster the epoch key and the channel live on different nodes.
    // Order matters: a replica that misses the message still sees the epoch move.
    redis::cmd("INCR")
        .arg(revocations_epoch_key(namespace))
        .query_async::<()>(conn)
        .await?;
    redis::cmd("PUBLISH")
        .arg(revocations_channel(namespace))
        .arg(hex::encode(hash))
        .query_async::<()>(conn)
        .await
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
    fn channel_names_are_namespaced() {
        assert_eq!(revocations_channel("tg"), "tg:keys:revoked");
        assert_eq!(revocations_epoch_key("t1"), "t1:keys:epoch");
    }
}
