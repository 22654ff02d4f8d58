//! Who is calling: the org behind an API key or a Clerk session token.
//!
//! Resolved keys are cached (bounded, by SHA-256 of the key, never the key itself). Unknown keys are cached
//! briefly too, so a client hammering with a bad key costs one lookup per few seconds, not one per request.
//! Revocations arrive from the control plane (see [`crate::background`]) and evict entries at once; a generation
//! counter keeps a lookup that raced with a revocation from re-inserting the revoked key.

use http::HeaderMap;
use moka::sync::Cache;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tollgate_common::credential::{self, CredentialError};
use tollgate_common::domain::OrgId;
use tollgate_common::keys::{self, KeyHash};

/// The credential a request presented.
pub enum Credential<'a> {
    /// `Authorization: Bearer tg_…` or `X-Api-Key: tg_…`.
    ApiKey {
        key: &'a str,
        header: CredentialHeader,
    },
    /// `Authorization: Bearer <JWT>`.
    Session(&'a str),
}

/// Which header carried the credential, so exactly that one is stripped before proxying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `Authorization`.
    Authorization,
    /// `X-Api-Key`.
    XApiKey,
}

/// Why no org could be identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// A malformed `Authorization` header.
    Malformed,
    /// Unknown or revoked key.
    BadKey,
    /// A session token that does not verify.
    BadToken,
    /// A valid session token without an active org.
    NoOrg,
    /// A valid session token of an org Tollgate does not know.
    UnknownOrg,
    /// PostgreSQL or the JWKS could not be reached to decide.
    Unavailable,
}

impl AuthFailure {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadKey => "bad_key",
            Self::BadToken => "bad_token",
            Self::NoOrg => "no_org",
            Self::UnknownOrg => "unknown_org",
            Self::Unavailable => "unavailable",
        }
    }

    /// Status and detail of the problem response.
    pub fn response(self) -> (u16, &'static str) {
        match self {
            Self::Missing => (
                401,
                "credentials are required: Authorization: Bearer <token> or X-Api-Key",
            ),
            Self::Malformed => (401, "Authorization: expected `Bearer <token>`"),
            Self::BadKey => (401, "the API key is invalid or revoked"),
            Self::BadToken => (401, "the session token is invalid or expired"),
            Self::NoOrg => (403, "the session has no active organization"),
            Self::UnknownOrg => (403, "the organization is not registered with Tollgate"),
            Self::Unavailable => (503, "credentials cannot be verified right now; retry later"),
        }
    }
}

/// The request's credential, classified for the proxy.
pub fn credential(headers: &HeaderMap) -> Result<Credential<'_>, AuthFailure> {
    match credential::from_headers(headers) {
        Ok(credential::Credential::Bearer(token)) if token.starts_with(keys::KEY_PREFIX) => {
            Ok(Credential::ApiKey {
                key: token,
                header: CredentialHeader::Authorization,
            })
        }
        Ok(credential::Credential::Bearer(token)) => Ok(Credential::Session(token)),
        Ok(credential::Credential::XApiKey(key)) => Ok(Credential::ApiKey {
            key,
            header: CredentialHeader::XApiKey,
        }),
        Err(CredentialError::Missing) => Err(AuthFailure::Missing),
        Err(CredentialError::MalformedAuthorization) => Err(AuthFailure::Malformed),
        Err(CredentialError::MalformedApiKey) => Err(AuthFailure::BadKey),
    }
}

/// An org as the proxy knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRef {
    /// Internal id.
    pub id: i64,
    /// Clerk id.
    pub org: OrgId,
}

/// Verified session tokens, by SHA-256 of the token, until they expire: an RS256 verification costs tens of
/// microseconds, and a browser sends the same token on every call of its minute-long life.
pub struct SessionCache {
    verified: Cache<KeyHash, (Arc<OrgRef>, i64)>,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            verified: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
        }
    }
}

impl SessionCache {
    /// The org of an already verified, unexpired token.
    pub fn get(&self, token_hash: &KeyHash, now_secs: i64) -> Option<Arc<OrgRef>> {
        self.verified
            .get(token_hash)
            .and_then(|(org, expires_at)| (now_secs < expires_at).then_some(org))
    }

    /// Remembers a verified token until `expires_at`.
    pub fn insert(&self, token_hash: KeyHash, org: Arc<OrgRef>, expires_at: i64) {
        self.verified.insert(token_hash, (org, expires_at));
    }
}

/// Cache of resolved API keys.
pub struct KeyCache {
    valid: Cache<KeyHash, Arc<OrgRef>>,
    unknown: Cache<KeyHash, ()>,
    generation: AtomicU64,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            valid: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            unknown: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(5))
                .build(),
            generation: AtomicU64::new(0),
        }
    }
}

impl KeyCache {
    /// The org behind `key`, from the cache or PostgreSQL.
    pub async fn resolve(&self, pg: &PgPool, key: &str) -> Result<Arc<OrgRef>, AuthFailure> {
        if !keys::looks_like_key(key) {
            return Err(AuthFailure::BadKey);
        }
        let hash = keys::hash(key);
        if let Some(org) = self.valid.get(&hash) {
            return Ok(org);
        }
        if self.unknown.contains_key(&hash) {
            return Err(AuthFailure::BadKey);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let resolved = keys::resolve(pg, key).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot resolve an API key: PostgreSQL unavailable");
            AuthFailure::Unavailable
        })?;
        // A revocation that arrived while PostgreSQL answered may concern this very key: do not cache.
        let unchanged = self.generation.load(Ordering::Acquire) == generation;
        match resolved {
            Some(r) => {
                let org = Arc::new(OrgRef {
                    id: r.org_id,
                    org: r.org,
                });
                if unchanged {
                    self.valid.insert(hash, Arc::clone(&org));
                }
                Ok(org)
            }
            None => {
                self.unknown.insert(hash, ());
                Err(AuthFailure::BadKey)
            }
        }
    }

    /// Forgets one key (its hash, hex-encoded as announced).
    pub fn revoke(&self, hash_hex: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(hash_hex.trim(), &mut hash).is_ok() {
            self.valid.invalidate(&hash);
        } else {
            self.valid.invalidate_all();
        }
    }

    /// Forgets every key (after missing announcements).
    pub fn revoke_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.valid.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_cached_session_is_used_only_until_it_expires() {
        let cache = SessionCache::default();
        let org = Arc::new(OrgRef {
            id: 7,
            org: OrgId::parse("org_a").unwrap(),
        });
        let hash = keys::hash("header.claims.signature");
        cache.insert(hash, Arc::clone(&org), 1_000);
        assert_eq!(cache.get(&hash, 999), Some(org));
        assert_eq!(cache.get(&hash, 1_000), None);
        assert_eq!(cache.get(&keys::hash("another"), 0), None);
    }

    #[test]
    fn reads_each_credential_shape() {
        assert!(matches!(
            credential(&headers(&[("authorization", "Bearer tg_abc")])),
            Ok(Credential::ApiKey {
                key: "tg_abc",
                header: CredentialHeader::Authorization
            })
        ));
        assert!(matches!(
            credential(&headers(&[("x-api-key", "tg_abc")])),
            Ok(Credential::ApiKey {
                key: "tg_abc",
                header: CredentialHeader::XApiKey
            })
        ));
        assert!(matches!(
            credential(&headers(&[("authorization", "bearer ey.x.y")])),
            Ok(Credential::Session("ey.x.y"))
        ));
        assert_eq!(credential(&headers(&[])).err(), Some(AuthFailure::Missing));
        assert_eq!(
            credential(&headers(&[("authorization", "Basic x")])).err(),
            Some(AuthFailure::Malformed)
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer ")])).err(),
            Some(AuthFailure::Malformed)
        );
    }
}
