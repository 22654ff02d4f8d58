//! Clerk session tokens, verified against the JWKS Clerk publishes.
//!
//! Only RS256 is accepted, whatever the token's header claims, so `alg: none` and HS256-signed-with-the-public-key
//! tokens fail before any key is touched. Keys are cached by `kid`. An unknown `kid` triggers a refetch, since
//! Clerk rotates keys, but at most once per `min_refresh_interval`: a flood of tokens with made-up `kid`s cannot
//! turn into a flood of requests to Clerk. Refetches are single-flight, and a failed fetch keeps the old keys.

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
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    exp: i64,
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    o: Option<RawOrg>,
}

#[derive(Deserialize)]
struct RawOrg {
    #[serde(default)]
    id: Option<String>,
}

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
        let org = match claims.org_id.or_else(|| claims.o.and_then(|o| o.id)) {
            Some(raw) => Some(OrgId::parse(&raw).map_err(|_| JwtError::BadClaims)?),
            None => None,
        };
        Ok(ClerkSession {
            user_id: claims.sub,
            org,
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
