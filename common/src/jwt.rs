//! Clerk session tokens, verified against the JWKS Clerk publishes.
//!
//! Only RS256 is accepted, whatever the token's header claims, so `alg: none` and HS256-signed-with-the-public-key
//! tokens fail before any key is touched. Keys are cached by `kid`. An unknown `kid` triggers a refetch, since
//! Clerk rotates keys, but at most once per `min_refresh_interval`: a flood of tokens with made-up `kid`s cannot
//! turn into a flood of requests to Clerk. Refetches are single-flight, and a failed fetch keeps the old keys.
//!
//! The active organization and the user's role in it come in two shapes. Clerk's "Session tokens" reference
//! (clerk.com/docs/guides/sessions/session-tokens; clerk/clerk-docs `docs/guides/sessions/session-tokens.mdx`):
//! version 1 carries `org_id` and `org_role` (example `org:admin`); version 2 (`"v": 2`) nests them in the `o`
//! claim, `o: {id, slg, rol, per, fpm}`, where `rol` is "the role of the user in the organization, without the
//! `org:` prefix" (example `admin`). [`ClerkSession::org_role`] is always in the `org:` form.

use crate::config::ClerkSettings;
use crate::domain::OrgId;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;
use tokio::time::Instant;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not a JWT at all, or an algorithm this library does not know (e.g. `none`).
    #[error("the token is malformed")]
    Malformed,
    /// A known algorithm other than RS256.
    #[error("the token is not signed with RS256")]
    UnsupportedAlgorithm,
    /// No `kid` in the header.
    #[error("the token has no key id")]
    MissingKid,
    /// No published key has this `kid`.
    #[error("the token's signing key is unknown")]
    UnknownKid,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// A claim is missing or has the wrong shape.
    #[error("the token's claims are invalid")]
    BadClaims,
    /// The JWKS could not be fetched and no cached key matches.
    #[error("the signing keys could not be fetched")]
    KeysUnavailable,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkSession {
    /// The Clerk user id (`sub`).
    pub user_id: String,
    /// The active organization: v1 `org_id`, or v2 `o.id`.
    pub org: Option<OrgId>,
    /// The user's role in the active organization, in Clerk's `org:` form (`org:admin`, `org:member`,
    /// `org:billing_manager`): v1 `org_role` as sent, v2 `o.rol` with the prefix added. `None` without an active
    /// organization, or when the token names none.
    pub org_role: Option<String>,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    exp: i64,
    #[serde(flatten)]
    org: RawOrgClaims,
}

/// The organization claims of both token versions.
#[derive(Deserialize, Default)]
struct RawOrgClaims {
    /// v1.
    #[serde(default)]
    org_id: Option<String>,
    /// v1, with the `org:` prefix.
    #[serde(default)]
    org_role: Option<String>,
    /// v2.
    #[serde(default)]
    o: Option<RawOrg>,
}

/// v2's `o` claim (`slg`, `per` and `fpm` are not used).
#[derive(Deserialize)]
struct RawOrg {
    #[serde(default)]
    id: Option<String>,
    /// Without the `org:` prefix.
    #[serde(default)]
    rol: Option<String>,
}

impl RawOrgClaims {
    /// The active organization and the user's role in it. The role comes from the same version of the claims as
    /// the org (v1 wins when a token carries both), so a role is never paired with another shape's org.
    fn active(self) -> Result<(Option<OrgId>, Option<String>), JwtError> {
        let (org, role) = match (self.org_id, self.o) {
            (Some(id), _) => (id, self.org_role),
            (None, Some(RawOrg { id: Some(id), rol })) => (id, rol),
            (None, _) => return Ok((None, None)),
        };
        let org = OrgId::parse(&org).map_err(|_| JwtError::BadClaims)?;
        Ok((Some(org), role.as_deref().and_then(org_role)))
    }
}

/// Clerk's `org:` form of an organization role: `admin` and `org:admin` are both `org:admin`. `None` for a blank
/// role, or one that is only the prefix or holds whitespace, control characters or commas (no Clerk role key
/// does; the comma separates `TOLLGATE_ADMIN_ROLES`).
pub fn org_role(raw: &str) -> Option<String> {
    let key = raw.strip_prefix(ORG_ROLE_PREFIX).unwrap_or(raw);
    let valid = !key.is_empty()
        && key.len() <= MAX_ROLE_KEY_LEN
        && !key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    valid.then(|| format!("{ORG_ROLE_PREFIX}{key}"))
}

/// The prefix of Clerk's organization roles (`org:admin`).
pub const ORG_ROLE_PREFIX: &str = "org:";
/// The longest role key taken (Clerk's keys are short identifiers).
const MAX_ROLE_KEY_LEN: usize = 100;

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// Verifies Clerk session tokens; share one per process.
pub struct ClerkVerifier {
    settings: ClerkSettings,
    http: reqwest::Client,
    validation: Validation,
    keys: RwLock<KeySet>,
    refresh: tokio::sync::Mutex<()>,
}

impl ClerkVerifier {
    /// A verifier with an empty cache; keys are fetched on first use.
    pub fn new(settings: ClerkSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.leeway = settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self {
            settings,
            http,
            validation,
            keys: RwLock::new(KeySet::default()),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether `token` claims to be a Clerk session token of the configured issuer — a JWT whose unverified
    /// payload has `iss` equal to `CLERK_ISSUER` — without verifying anything. With no issuer configured every
    /// JWT-shaped token counts as Clerk's (the safe reading: it is then verified, or refused, never passed on).
    ///
    /// The proxy uses this to tell a Clerk token from the customer's own bearer token.
    pub fn claims_our_issuer(&self, token: &str) -> bool {
        let mut parts = token.split('.');
        let (Some(_header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Some(issuer) = &self.settings.issuer else {
            return true;
        };
        #[derive(Deserialize)]
        struct Issuer {
            iss: Option<String>,
        }
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Issuer>(&bytes).ok())
            .and_then(|claims| claims.iss)
            .is_some_and(|iss| iss == *issuer)
    }

    /// Verifies `token` and returns its session.
    pub async fn verify(&self, token: &str) -> Result<ClerkSession, JwtError> {
        let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(JwtError::UnsupportedAlgorithm);
        }
        let kid = header.kid.ok_or(JwtError::MissingKid)?;
        let key = match self.cached(&kid) {
            Some((key, false)) => key,
            Some((stale, true)) => {
                // A failed refetch keeps the old key: a Clerk outage must not lock everyone out.
                let _ = self.refresh(&kid).await;
                self.cached(&kid).map_or(stale, |(key, _)| key)
            }
            None => {
                self.refresh(&kid).await?;
                self.cached(&kid).ok_or(JwtError::UnknownKid)?.0
            }
        };
        let data =
            decode::<RawClaims>(token, &key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    JwtError::UnsupportedAlgorithm
                }
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => JwtError::BadClaims,
                _ => JwtError::Malformed,
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(JwtError::BadClaims);
        }
        let (org, org_role) = claims.org.active()?;
        Ok(ClerkSession {
            user_id: claims.sub,
            org,
            org_role,
            expires_at: claims.exp,
        })
    }

    /// The cached key for `kid`, and whether the key set is older than `max_key_age`.
    fn cached(&self, kid: &str) -> Option<(DecodingKey, bool)> {
        let set = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = set
            .fetched_at
            .is_none_or(|t| t.elapsed() >= self.settings.max_key_age);
        set.keys.get(kid).map(|k| (k.clone(), stale))
    }

    /// Refetches the JWKS unless another caller just did or the floor has not passed yet (then the caller
    /// works with what is cached).
    async fn refresh(&self, kid: &str) -> Result<(), JwtError> {
        let _single_flight = self.refresh.lock().await;
        {
            let set = self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let fresh = set
                .fetched_at
                .is_some_and(|t| t.elapsed() < self.settings.max_key_age);
            let within_floor = set
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.settings.min_refresh_interval);
            if (fresh && set.keys.contains_key(kid)) || within_floor {
                return Ok(());
            }
        }
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(jwks.keys = keys.len(), "fetched Clerk signing keys");
                let mut set = self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                set.keys = keys;
                set.fetched_at = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not fetch Clerk signing keys");
                Err(JwtError::KeysUnavailable)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let set: JwkSet = self
            .http
            .get(self.settings.jwks_url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.without_url().to_string())?
            .json()
            .await
            .map_err(|e| e.without_url().to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|k| (kid, k))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn active(claims: serde_json::Value) -> (Option<String>, Option<String>) {
        let raw: RawOrgClaims = serde_json::from_value(claims).expect("claims parse");
        let (org, role) = raw.active().expect("valid org claims");
        (org.map(|o| o.as_str().to_owned()), role)
    }

    fn some(org: &str, role: &str) -> (Option<String>, Option<String>) {
        (Some(org.to_owned()), Some(role.to_owned()))
    }

    #[test]
    fn v1_role_is_taken_as_sent() {
        let v1 = |role: &str| active(json!({"org_id": "org_a", "org_role": role}));
        assert_eq!(v1("org:admin"), some("org_a", "org:admin"));
        assert_eq!(v1("org:member"), some("org_a", "org:member"));
        assert_eq!(
            v1("org:billing_manager"),
            some("org_a", "org:billing_manager")
        );
    }

    #[test]
    fn v2_role_gains_the_org_prefix() {
        let v2 = |role: &str| {
            active(
                json!({"v": 2, "o": {"id": "org_b", "rol": role, "slg": "acme", "per": "read,manage", "fpm": "3,2"}}),
            )
        };
        assert_eq!(v2("admin"), some("org_b", "org:admin"));
        assert_eq!(v2("member"), some("org_b", "org:member"));
        assert_eq!(v2("billing_manager"), some("org_b", "org:billing_manager"));
    }

    #[test]
    fn admin_and_org_admin_are_one_role() {
        assert_eq!(org_role("admin"), org_role("org:admin"));
        assert_eq!(org_role("admin").as_deref(), Some("org:admin"));
        // A v2 role that already carries the prefix is not prefixed twice.
        assert_eq!(
            active(json!({"o": {"id": "org_b", "rol": "org:admin"}})),
            some("org_b", "org:admin")
        );
    }

    #[test]
    fn a_missing_or_blank_role_is_none() {
        assert_eq!(
            active(json!({"org_id": "org_a"})),
            (Some("org_a".to_owned()), None)
        );
        assert_eq!(
            active(json!({"o": {"id": "org_b"}})),
            (Some("org_b".to_owned()), None)
        );
        for blank in ["", "org:", " ", "org: admin", "ad min", "a,b", "adm\u{7}in"] {
            assert_eq!(org_role(blank), None, "{blank:?}");
        }
        assert_eq!(org_role(&"r".repeat(101)), None);
    }

    #[test]
    fn the_role_comes_from_the_same_version_as_the_org() {
        // No org: no role, whatever the token says.
        assert_eq!(active(json!({"org_role": "org:admin"})), (None, None));
        assert_eq!(active(json!({"o": {"rol": "admin"}})), (None, None));
        assert_eq!(active(json!({})), (None, None));
        // Both versions: v1's org, and v1's role with it (none here), never v2's.
        assert_eq!(
            active(json!({"org_id": "org_a", "o": {"id": "org_b", "rol": "admin"}})),
            (Some("org_a".to_owned()), None)
        );
    }

    #[test]
    fn a_malformed_org_id_is_refused() {
        let raw: RawOrgClaims =
            serde_json::from_value(json!({"o": {"id": "not an org", "rol": "admin"}})).unwrap();
        assert_eq!(raw.active().unwrap_err(), JwtError::BadClaims);
    }
}
