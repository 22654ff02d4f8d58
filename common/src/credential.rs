//! Reading the credentials a request presents, the one way both binaries do it.
//!
//! A request may carry `Authorization` and `X-Api-Key`. [`Presented::read`] reads both without deciding anything;
//! [`Presented::single`] then picks the one credential the control plane authenticates with, and the proxy applies
//! its own rule (it must also know which headers to strip, and lets a customer's own `Authorization` through; see
//! `proxy::auth`). In both, two *different* credentials in one request are refused: a request must not be able to
//! be billed to one org while carrying another org's key.

use http::HeaderMap;

/// The `X-Api-Key` header.
pub const API_KEY_HEADER: &str = "x-api-key";
/// [`API_KEY_HEADER`] as a header name, built once (a look-up by `&str` parses the name each time).
pub const API_KEY: http::HeaderName = http::HeaderName::from_static(API_KEY_HEADER);

/// What `Authorization` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// `Bearer <token>`, the token trimmed.
    Bearer(&'a str),
    /// Another scheme (`Basic …`, `Digest …`), an empty bearer, or a value that is not visible ASCII: not a
    /// credential Tollgate issues, possibly the customer's own.
    Other,
}

/// The credential headers of a request, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Presented<'a> {
    /// `Authorization`, when present.
    pub authorization: Option<Authorization<'a>>,
    /// `X-Api-Key`, trimmed, when present; `Err(())` when it is not a valid header string.
    pub api_key: Option<Result<&'a str, ()>>,
    /// Whether either header was sent more than once (only the first value is read above).
    pub repeated: bool,
}

/// The one credential a request authenticates with (control plane rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <token>`, trimmed.
    Bearer(&'a str),
    /// `X-Api-Key: <key>`, trimmed.
    XApiKey(&'a str),
}

/// Why no single credential could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Neither header is present.
    #[error("credentials are required: Authorization: Bearer <token> or X-Api-Key")]
    Missing,
    /// `Authorization` is present but not `Bearer <token>`, and there is no `X-Api-Key`.
    #[error("Authorization: expected `Bearer <token>`")]
    MalformedAuthorization,
    /// `X-Api-Key` is not a valid header value.
    #[error("X-Api-Key: not a valid header value")]
    MalformedApiKey,
    /// `Authorization` and `X-Api-Key` carry two different credentials.
    #[error("Authorization and X-Api-Key carry different credentials; send one")]
    Conflicting,
}

// === impl Presented ===

impl<'a> Presented<'a> {
    /// Reads both headers. Only the first value of each counts.
    pub fn read(headers: &'a HeaderMap) -> Self {
        // One look-up per header: its first value, and whether a second follows.
        let mut authorization = headers.get_all(http::header::AUTHORIZATION).iter();
        let mut api_key = headers.get_all(&API_KEY).iter();
        let (first_authorization, first_api_key) = (authorization.next(), api_key.next());
        let repeated = authorization.next().is_some() || api_key.next().is_some();
        let authorization = first_authorization.map(|value| {
            let bearer = value.to_str().ok().and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                let token = token.trim();
                (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
            });
            bearer.map_or(Authorization::Other, Authorization::Bearer)
        });
        let api_key = first_api_key.map(|v| v.to_str().map(str::trim).map_err(|_| ()));
        Self {
            authorization,
            api_key,
            repeated,
        }
    }

    /// The bearer token, if `Authorization` holds one.
    pub fn bearer(&self) -> Option<&'a str> {
        match self.authorization {
            Some(Authorization::Bearer(token)) => Some(token),
            _ => None,
        }
    }

    /// The one credential to authenticate with: the bearer token or the API key; both only when they are the same
    /// value. Any other `Authorization` beside an API key is refused too: at the control plane every credential
    /// header is meant for us, so one that does not verify must not be silently ignored.
    pub fn single(&self) -> Result<Credential<'a>, CredentialError> {
        let api_key = match self.api_key {
            Some(Ok(key)) => Some(key),
            Some(Err(())) => return Err(CredentialError::MalformedApiKey),
            None => None,
        };
        match (self.authorization, api_key) {
            (Some(Authorization::Bearer(token)), Some(key)) if token != key => {
                Err(CredentialError::Conflicting)
            }
            (Some(Authorization::Bearer(token)), _) => Ok(Credential::Bearer(token)),
            (Some(Authorization::Other), _) => Err(CredentialError::MalformedAuthorization),
            (None, Some(key)) => Ok(Credential::XApiKey(key)),
            (None, None) => Err(CredentialError::Missing),
        }
    }
}

/// The request's single credential (see [`Presented::single`]).
pub fn from_headers(headers: &HeaderMap) -> Result<Credential<'_>, CredentialError> {
    Presented::read(headers).single()
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

    #[test]
    fn reads_each_credential_shape() {
        assert_eq!(
            from_headers(&headers(&[("authorization", "Bearer tg_abc")])),
            Ok(Credential::Bearer("tg_abc"))
        );
        assert_eq!(
            from_headers(&headers(&[("authorization", "bearer  ey.x.y ")])),
            Ok(Credential::Bearer("ey.x.y"))
        );
        assert_eq!(
            from_headers(&headers(&[("x-api-key", " tg_abc")])),
            Ok(Credential::XApiKey("tg_abc"))
        );
        assert_eq!(from_headers(&headers(&[])), Err(CredentialError::Missing));
        for bad in ["Basic x", "Bearer ", "Bearer", "tg_abc"] {
            assert_eq!(
                from_headers(&headers(&[("authorization", bad)])),
                Err(CredentialError::MalformedAuthorization),
                "{bad}"
            );
        }
    }

    #[test]
    fn two_different_credentials_are_refused_and_one_in_both_headers_is_one() {
        assert_eq!(
            from_headers(&headers(&[
                ("authorization", "Bearer a"),
                ("x-api-key", "tg_b")
            ])),
            Err(CredentialError::Conflicting)
        );
        assert_eq!(
            from_headers(&headers(&[
                ("authorization", "Bearer tg_b"),
                ("x-api-key", "tg_b")
            ])),
            Ok(Credential::Bearer("tg_b"))
        );
    }

    #[test]
    fn any_other_authorization_beside_an_api_key_is_refused() {
        assert_eq!(
            from_headers(&headers(&[
                ("authorization", "Basic dXNlcjpwdw=="),
                ("x-api-key", "tg_b")
            ])),
            Err(CredentialError::MalformedAuthorization)
        );
        let h = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        let p = Presented::read(&h);
        assert_eq!(p.authorization, Some(Authorization::Other));
        assert_eq!(p.bearer(), None);
    }

    #[test]
    fn a_repeated_credential_header_is_noticed_and_its_first_value_read() {
        for pairs in [
            &[("x-api-key", "tg_a"), ("x-api-key", "tg_b")][..],
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")][..],
        ] {
            let h = headers(pairs);
            let presented = Presented::read(&h);
            assert!(presented.repeated, "{pairs:?}");
            assert!(
                presented.api_key == Some(Ok("tg_a")) || presented.bearer() == Some("a"),
                "{pairs:?}"
            );
        }
        let h = headers(&[("authorization", "Bearer a"), ("x-api-key", "tg_a")]);
        assert!(!Presented::read(&h).repeated);
    }

    #[test]
    fn a_malformed_api_key_is_reported() {
        let mut h = HeaderMap::new();
        h.insert(
            API_KEY_HEADER,
            http::HeaderValue::from_bytes(b"tg_\xff").unwrap(),
        );
        assert_eq!(from_headers(&h), Err(CredentialError::MalformedApiKey));
    }
}
