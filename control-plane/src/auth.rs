//! Who is calling, and whether they may call this route.
//!
//! Every handler takes a [`Caller<P>`]: the route declares its policy `P` in its signature, and the extractor
//! authenticates the request before the body is read. Credentials, in order:
//!
//! * `Authorization: Bearer <TOLLGATE_ADMIN_TOKEN>` — the operator (compared in constant time);
//! * `Authorization: Bearer tg_…` or `X-Api-Key: tg_…` — an org API key, resolved by hash (cached, see
//!   `tollgate_common::keys::cache`; a revocation evicts it at once);
//! * `Authorization: Bearer <JWT>` — a Clerk session token (verified once, then cached until it expires).
//!
//! A missing or failing credential is 401; a valid one that the policy does not admit, or that acts on another
//! org, is 403.
//!
//! **Roles.** Every member of an org reads; a route that changes the org (billing, payment methods, keys) takes
//! [`OrgAdmin`], which admits a Clerk user only when the session's org role is one of `TOLLGATE_ADMIN_ROLES`
//! ([`AdminRoles`]), and anyone else gets 403 naming the roles required. The operator is not a user and is
//! unaffected; API keys are not admitted on those routes at all.

use crate::app::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, request::Parts};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::marker::PhantomData;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_common::credential::{self, Credential, CredentialError};
use tollgate_common::domain::OrgId;
use tollgate_common::jwt::{self, ClerkSession, JwtError, ORG_ROLE_PREFIX};
use tollgate_common::keys;
use tollgate_common::keys::cache::{CachedKey, ResolveError};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The platform operator.
    Operator,
    /// A Clerk user, possibly with an active organization.
    User(ClerkSession),
    /// An org API key.
    ApiKey(Arc<CachedKey>),
}

impl Principal {
    /// The org this request acts on: `requested` if the caller may act on it, else the caller's own org.
    /// The operator must name one (404 otherwise: the operator's own org does not exist).
    pub fn org_scope(&self, requested: Option<&OrgId>) -> Result<OrgId, ApiError> {
        let own = match self {
            Self::Operator => {
                // "Omitted means the caller's own org" (CONTRACT §3); the operator has none, so there is no such
                // org: 404 naming the field.
                return requested.cloned().ok_or_else(|| ApiError::NotFound {
                    field: "orgId",
                    detail: "the operator has no organization of its own; name one with orgId"
                        .to_owned(),
                });
            }
            Self::User(session) => session.org.as_ref().ok_or_else(|| {
                ApiError::Forbidden("the session has no active organization".to_owned())
            })?,
            Self::ApiKey(key) => &key.org.org,
        };
        match requested {
            Some(r) if r != own => Err(ApiError::Forbidden(
                "orgId: the caller may not act on this organization".to_owned(),
            )),
            _ => Ok(own.clone()),
        }
    }

    /// A short label for logs and metrics (never an identifier).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::User(_) => "user",
            Self::ApiKey(_) => "api_key",
        }
    }
}

/// Which principals a route admits.
pub trait Policy: Send + Sync + 'static {
    /// Clerk users.
    const USER: bool;
    /// Org API keys.
    const API_KEY: bool;
    /// The operator.
    const OPERATOR: bool;
    /// Whether a Clerk user must also hold one of `TOLLGATE_ADMIN_ROLES` (a route that changes the org).
    const USER_NEEDS_ADMIN_ROLE: bool = false;
}

/// Users whose org role is one of `TOLLGATE_ADMIN_ROLES`, and the operator: every route that changes an org's
/// billing, payment methods or keys (and, later, budgets and webhook endpoints).
pub struct OrgAdmin;
impl Policy for OrgAdmin {
    const USER: bool = true;
    const API_KEY: bool = false;
    const OPERATOR: bool = true;
    const USER_NEEDS_ADMIN_ROLE: bool = true;
}

/// Users (any role) and the operator: reading billing (invoices, previews) and the org's keys.
pub struct UserOrOperator;
impl Policy for UserOrOperator {
    const USER: bool = true;
    const API_KEY: bool = false;
    const OPERATOR: bool = true;
}

/// Users, API keys and the operator (metering).
pub struct AnyPrincipal;
impl Policy for AnyPrincipal {
    const USER: bool = true;
    const API_KEY: bool = true;
    const OPERATOR: bool = true;
}

/// Users and API keys only (the caller's own view).
pub struct OrgMember;
impl Policy for OrgMember {
    const USER: bool = true;
    const API_KEY: bool = true;
    const OPERATOR: bool = false;
}

/// The operator only (`/api/admin/*`, `/api/jobs/*`).
pub struct OperatorOnly;
impl Policy for OperatorOnly {
    const USER: bool = false;
    const API_KEY: bool = false;
    const OPERATOR: bool = true;
}

/// The Clerk organization roles that may change an org (`TOLLGATE_ADMIN_ROLES`), in Clerk's `org:` form, without
/// duplicates, never empty once configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRoles(Arc<[String]>);

impl Default for AdminRoles {
    /// Clerk's own administrator role.
    fn default() -> Self {
        Self(Arc::from([format!("{ORG_ROLE_PREFIX}admin")]))
    }
}

impl AdminRoles {
    /// Parses a comma-separated list: each entry a role name, with or without the `org:` prefix (`admin` and
    /// `org:admin` are one role, as v2 and v1 tokens spell it). The error says which entry is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut roles: Vec<String> = Vec::new();
        for (i, entry) in raw.split(',').enumerate() {
            let entry = entry.trim();
            let role = jwt::org_role(entry).ok_or_else(|| {
                if entry.is_empty() {
                    format!("entry {} is empty; expected role names such as org:admin", i + 1)
                } else {
                    format!(
                        "entry {} is not a role name (no spaces, commas or control characters; e.g. org:admin)",
                        i + 1
                    )
                }
            })?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        Ok(Self(roles.into()))
    }

    /// Whether a session with this org role may change the org.
    pub fn admits(&self, role: Option<&str>) -> bool {
        role.is_some_and(|role| self.0.iter().any(|r| r == role))
    }

    /// The roles, in the order configured.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// The authenticated caller of a route with policy `P`.
pub struct Caller<P: Policy> {
    /// Who is calling.
    pub principal: Principal,
    _policy: PhantomData<P>,
}

impl<P: Policy> FromRequestParts<AppState> for Caller<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        // The idempotency layer may have authenticated the request already.
        let principal = match parts.extensions.remove::<Principal>() {
            Some(principal) => principal,
            None => authenticate(&parts.headers, app).await.inspect_err(|e| {
                app.metrics
                    .auth_failures
                    .with_label_values(&[failure_label(e)])
                    .inc();
            })?,
        };
        let admitted = match principal {
            Principal::Operator => P::OPERATOR,
            Principal::User(_) => P::USER,
            Principal::ApiKey(_) => P::API_KEY,
        };
        if !admitted {
            return Err(ApiError::Forbidden(format!(
                "this endpoint is not open to {} credentials",
                principal.kind().replace('_', " ")
            )));
        }
        if P::USER_NEEDS_ADMIN_ROLE
            && let Principal::User(session) = &principal
            && !app.config.admin_roles.admits(session.org_role.as_deref())
        {
            return Err(ApiError::RoleRequired {
                required: app.config.admin_roles.clone(),
                held: session.org_role.clone(),
            });
        }
        Ok(Self {
            principal,
            _policy: PhantomData,
        })
    }
}

fn failure_label(e: &ApiError) -> &'static str {
    match e {
        ApiError::Unauthenticated(_) => "unauthenticated",
        _ => "unavailable",
    }
}

/// Who the credentials of `headers` name (no policy applied).
pub(crate) async fn authenticate(
    headers: &HeaderMap,
    app: &AppState,
) -> Result<Principal, ApiError> {
    let credential = credential::from_headers(headers).map_err(|e| {
        ApiError::Unauthenticated(match e {
            CredentialError::Missing => {
                "credentials are required: Authorization: Bearer <token> or X-Api-Key"
            }
            CredentialError::MalformedAuthorization => "Authorization: expected `Bearer <token>`",
            CredentialError::MalformedApiKey => "X-Api-Key: not a valid header value",
            CredentialError::Conflicting => {
                "Authorization and X-Api-Key carry different credentials; send one"
            }
        })
    })?;
    match credential {
        Credential::Bearer(token) if is_operator(token, app) => Ok(Principal::Operator),
        Credential::Bearer(token) if token.starts_with(keys::KEY_PREFIX) => {
            api_key(token, app).await
        }
        Credential::XApiKey(token) => api_key(token, app).await,
        Credential::Bearer(token) => session(token, app).await,
    }
}

/// A Clerk session: from the cache, or verified (and cached until it expires).
async fn session(token: &str, app: &AppState) -> Result<Principal, ApiError> {
    let now_secs = app.clock.now().timestamp();
    let session = app
        .sessions
        .get_or_verify(token, now_secs, || async {
            let session = app.clerk.verify(token).await.map_err(|e| match e {
                JwtError::KeysUnavailable => ApiError::Unavailable(
                    "session tokens cannot be verified right now; retry later".to_owned(),
                ),
                JwtError::Expired => ApiError::Unauthenticated("the session token has expired"),
                JwtError::NotYetValid => {
                    ApiError::Unauthenticated("the session token is not valid yet")
                }
                JwtError::WrongIssuer => {
                    ApiError::Unauthenticated("the session token's issuer is not accepted")
                }
                _ => ApiError::Unauthenticated("the session token is invalid"),
            })?;
            let expires_at = session.expires_at;
            Ok::<_, ApiError>((session, expires_at))
        })
        .await?;
    Ok(Principal::User(session))
}

/// Hashing both sides first gives equal-length inputs, so the comparison time says nothing about the token.
fn is_operator(token: &str, app: &AppState) -> bool {
    let presented = Sha256::digest(token.as_bytes());
    let expected = Sha256::digest(app.config.admin_token.expose_secret().as_bytes());
    presented.ct_eq(&expected).into()
}

async fn api_key(token: &str, app: &AppState) -> Result<Principal, ApiError> {
    let key = app
        .keys
        .resolve(&app.pg, token, std::time::Instant::now())
        .await
        .map_err(|e| match e {
            ResolveError::Unknown => ApiError::Unauthenticated("the API key is invalid or revoked"),
            ResolveError::Database(e) => ApiError::Database(e),
        })?;
    if key.due_for_touch(app.clock.now().timestamp()) {
        let pg = app.pg.clone();
        let key_id = key.key_id;
        // Bookkeeping only: the request does not wait for it, and a failure is not the caller's problem.
        tokio::spawn(async move {
            if let Err(e) = keys::touch(&pg, key_id).await {
                tracing::debug!(error = %e, "could not record key use");
            }
        });
    }
    Ok(Principal::ApiKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_roles_admit_only_their_roles() {
        let roles = AdminRoles::parse("org:admin,billing_manager").unwrap();
        assert!(roles.admits(Some("org:admin")));
        assert!(roles.admits(Some("org:billing_manager")));
        assert!(!roles.admits(Some("org:member")));
        assert!(!roles.admits(None));
        // Sessions carry roles in the org: form; a bare name never matches by accident.
        assert!(!roles.admits(Some("admin")));
        assert!(AdminRoles::default().admits(Some("org:admin")));
    }

    #[test]
    fn admin_roles_name_the_bad_entry() {
        assert_eq!(
            AdminRoles::parse("org:admin,").unwrap_err(),
            "entry 2 is empty; expected role names such as org:admin"
        );
        assert!(
            AdminRoles::parse("org:admin, a b")
                .unwrap_err()
                .starts_with("entry 2 ")
        );
    }
}
