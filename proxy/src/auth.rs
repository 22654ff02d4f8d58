//! Who is calling: which of the request's headers carries its Tollgate credential, and which to strip. Keys and
//! session tokens are then resolved through the caches of `tollgate_common::keys::cache`.

use http::HeaderMap;
use tollgate_common::credential::{Authorization, Presented};
use tollgate_common::keys;

/// The Tollgate credential a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// An API key, `tg_…`, from `Authorization: Bearer` or `X-Api-Key`.
    ApiKey(&'a str),
    /// A Clerk session token from `Authorization: Bearer`.
    Session(&'a str),
}

/// Which credential headers to remove before proxying: every header that carries a Tollgate credential, and no
/// other (a customer's own `Authorization` or `X-Api-Key` reaches their API unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Strip {
    /// Remove `Authorization`.
    pub authorization: bool,
    /// Remove `X-Api-Key`.
    pub api_key: bool,
}

/// The credential to identify the org with, and what to strip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected<'a> {
    /// The credential.
    pub credential: Credential<'a>,
    /// The headers that carry Tollgate credentials.
    pub strip: Strip,
}

/// Why no org could be identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// A malformed or repeated credential header.
    Malformed,
    /// Two different Tollgate credentials in one request.
    Ambiguous,
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
            Self::Ambiguous => "ambiguous",
            Self::BadKey => "bad_key",
            Self::BadToken => "bad_token",
            Self::NoOrg => "no_org",
            Self::UnknownOrg => "unknown_org",
            Self::Unavailable => "unavailable",
        }
    }

    /// Every label, so the series exist before the first failure.
    pub const LABELS: [&'static str; 8] = [
        "missing",
        "malformed",
        "ambiguous",
        "bad_key",
        "bad_token",
        "no_org",
        "unknown_org",
        "unavailable",
    ];

    /// Status and detail of the problem response.
    pub fn response(self) -> (u16, &'static str) {
        match self {
            Self::Missing => (
                401,
                "credentials are required: Authorization: Bearer <token> or X-Api-Key",
            ),
            Self::Malformed => (
                401,
                "Authorization: expected one `Bearer <token>` (and at most one X-Api-Key)",
            ),
            Self::Ambiguous => (
                401,
                "Authorization and X-Api-Key carry two different Tollgate credentials; send one",
            ),
            Self::BadKey => (401, "the API key is invalid or revoked"),
            Self::BadToken => (401, "the session token is invalid or expired"),
            Self::NoOrg => (403, "the session has no active organization"),
            Self::UnknownOrg => (403, "the organization is not registered with Tollgate"),
            Self::Unavailable => (503, "credentials cannot be verified right now; retry later"),
        }
    }
}

/// Picks the request's Tollgate credential (`is_clerk` tells a Clerk session token from the customer's own bearer
/// token, see [`claims_our_issuer`]).
///
/// [`claims_our_issuer`]: tollgate_common::jwt::ClerkVerifier::claims_our_issuer
///
/// * A `tg_` key in either header is Tollgate's; the same key in both headers is one credential.
/// * Without a key in `X-Api-Key`, any other bearer token is taken for a Clerk session token (and verified).
/// * With a key in `X-Api-Key`, the key is the credential: a bearer token that is not a Clerk token of our issuer,
///   or another `Authorization` scheme (`Basic …`), is the customer's own and passes through unchanged; a Clerk
///   token or a different key beside it is two credentials, refused.
/// * A repeated `Authorization` or `X-Api-Key` line is refused, so no second value can slip past the strip.
pub fn select<'a>(
    headers: &'a HeaderMap,
    is_clerk: impl FnOnce(&str) -> bool,
) -> Result<Selected<'a>, AuthFailure> {
    let presented = Presented::read(headers);
    // A repeated header could carry a second value past the strip; a `Bearer` scheme without a readable token is
    // meant for us and must not pass for the customer's own header.
    if presented.repeated || presented.authorization == Some(Authorization::MalformedBearer) {
        return Err(AuthFailure::Malformed);
    }
    let header_key = match presented.api_key {
        Some(Ok(key)) if key.starts_with(keys::KEY_PREFIX) => Some(key),
        _ => None,
    };
    let from_authorization = match presented.bearer() {
        Some(token) if token.starts_with(keys::KEY_PREFIX) => Some(Credential::ApiKey(token)),
        Some(token) if header_key.is_none() || is_clerk(token) => Some(Credential::Session(token)),
        _ => None,
    };
    let strip = |authorization, api_key| Strip {
        authorization,
        api_key,
    };
    match (from_authorization, header_key) {
        (Some(Credential::ApiKey(a)), Some(k)) if a == k => Ok(Selected {
            credential: Credential::ApiKey(k),
            strip: strip(true, true),
        }),
        (Some(_), Some(_)) => Err(AuthFailure::Ambiguous),
        (Some(credential), None) => Ok(Selected {
            credential,
            strip: strip(true, false),
        }),
        (None, Some(key)) => Ok(Selected {
            credential: Credential::ApiKey(key),
            strip: strip(false, true),
        }),
        (None, None) => Err(match (presented.api_key, presented.authorization) {
            (Some(_), _) => AuthFailure::BadKey,
            (None, Some(_)) => AuthFailure::Malformed,
            (None, None) => AuthFailure::Missing,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn selected(pairs: &[(&str, &str)], clerk: bool) -> Result<Selected<'static>, AuthFailure> {
        let h: &'static HeaderMap = Box::leak(Box::new(headers(pairs)));
        select(h, |_| clerk)
    }

    const KEY: &str = "tg_aaaa";
    const OTHER: &str = "tg_bbbb";

    #[test]
    fn reads_each_credential_shape() {
        let bearer = format!("Bearer {KEY}");
        assert_eq!(
            selected(&[("authorization", &bearer)], false),
            Ok(Selected {
                credential: Credential::ApiKey(KEY),
                strip: Strip {
                    authorization: true,
                    api_key: false
                }
            })
        );
        assert_eq!(
            selected(&[("x-api-key", KEY)], false),
            Ok(Selected {
                credential: Credential::ApiKey(KEY),
                strip: Strip {
                    authorization: false,
                    api_key: true
                }
            })
        );
        assert_eq!(
            selected(&[("authorization", "bearer ey.x.y")], false).map(|s| s.credential),
            Ok(Credential::Session("ey.x.y")),
            "without a key, any bearer token is taken for a session token"
        );
        assert_eq!(selected(&[], false), Err(AuthFailure::Missing));
        assert_eq!(
            selected(&[("authorization", "Basic x")], false),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            selected(&[("authorization", "Bearer ")], false),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            selected(&[("x-api-key", "not-ours")], false),
            Err(AuthFailure::BadKey)
        );
    }

    #[test]
    fn every_tollgate_credential_is_stripped_and_two_different_ones_are_refused() {
        let bearer = format!("Bearer {KEY}");
        assert_eq!(
            selected(&[("authorization", &bearer), ("x-api-key", KEY)], false),
            Ok(Selected {
                credential: Credential::ApiKey(KEY),
                strip: Strip {
                    authorization: true,
                    api_key: true
                }
            }),
            "the same key in both headers is one credential, stripped from both"
        );
        assert_eq!(
            selected(&[("authorization", &bearer), ("x-api-key", OTHER)], false),
            Err(AuthFailure::Ambiguous)
        );
        assert_eq!(
            selected(
                &[("authorization", "Bearer ey.x.y"), ("x-api-key", KEY)],
                true
            ),
            Err(AuthFailure::Ambiguous),
            "a Clerk token beside a key is two credentials"
        );
        assert_eq!(
            selected(&[("x-api-key", KEY), ("x-api-key", OTHER)], false),
            Err(AuthFailure::Malformed),
            "a second X-Api-Key line cannot slip past the strip"
        );
    }

    #[test]
    fn a_tab_after_the_scheme_is_the_same_credential() {
        let tab = format!("Bearer\t{KEY}");
        assert_eq!(
            selected(&[("authorization", &tab), ("x-api-key", OTHER)], false),
            Err(AuthFailure::Ambiguous),
            "a second key after a tab is a second credential, not the customer's own header"
        );
        assert_eq!(
            selected(&[("authorization", &tab), ("x-api-key", KEY)], false),
            Ok(Selected {
                credential: Credential::ApiKey(KEY),
                strip: Strip {
                    authorization: true,
                    api_key: true
                }
            })
        );
        let spaces = format!("BEARER  {OTHER}");
        assert_eq!(
            selected(&[("authorization", &spaces), ("x-api-key", KEY)], false),
            Err(AuthFailure::Ambiguous)
        );
        assert_eq!(
            selected(&[("authorization", "Bearer"), ("x-api-key", KEY)], false),
            Err(AuthFailure::Malformed),
            "a bearer without a token is ours and malformed, not the customer's"
        );
    }

    #[test]
    fn the_customers_own_authorization_passes_beside_a_key() {
        for own in [
            "Basic dXNlcjpwdw==",
            "Bearer customer-token",
            "Bearer ey.x.y",
        ] {
            assert_eq!(
                selected(&[("authorization", own), ("x-api-key", KEY)], false),
                Ok(Selected {
                    credential: Credential::ApiKey(KEY),
                    strip: Strip {
                        authorization: false,
                        api_key: true
                    }
                }),
                "{own}"
            );
        }
    }
}
