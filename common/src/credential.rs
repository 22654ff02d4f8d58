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

/// The header that tells the upstream which org made the call; the proxy sets it, replacing any client value.
pub const ORG_HEADER: &str = "x-tollgate-org";

/// Whether a header name (lower case, as `http` stores names) is another spelling of one of Tollgate's own,
/// `X-Api-Key` or `X-Tollgate-Org`: equal to it once `_` and `-` are taken as one character and case is ignored
/// (`X_Tollgate_Org`, `x_api_key`, `X-Api_Key`). CGI-style servers (WSGI, older Rack) read `X_Tollgate_Org` and
/// `X-Tollgate-Org` both as `HTTP_X_TOLLGATE_ORG`, so such a header must never reach the upstream. The names
/// themselves are not aliases: they follow their own rules.
pub fn is_alias_of_ours(name: &str) -> bool {
    fn fold(b: u8) -> u8 {
        match b {
            b'_' => b'-',
            other => other.to_ascii_lowercase(),
        }
    }
    fn same(name: &str, ours: &str) -> bool {
        name.len() == ours.len() && name.bytes().zip(ours.bytes()).all(|(a, b)| fold(a) == b)
    }
    name.contains('_') && (same(name, API_KEY_HEADER) || same(name, ORG_HEADER))
}

/// What `Authorization` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// `Bearer <token>`: the scheme in any case, one or more spaces or tabs, the token (trimmed).
    Bearer(&'a str),
    /// The `Bearer` scheme without a readable token: nothing after it, or bytes that are not visible ASCII. Meant
    /// as a bearer credential, so never taken for the customer's own header.
    MalformedBearer,
    /// Another scheme (`Basic …`, `Digest …`): not a credential Tollgate issues, possibly the customer's own.
    Other,
}

/// Spaces and tabs: what separates an auth scheme from its credentials (RFC 9110 §11.4 writes `1*SP`; servers and
/// clients accept tabs too, so both are read as a separator here, or `Bearer<TAB>tg_…` would pass for a foreign
/// scheme).
const fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

// === impl Authorization ===

impl<'a> Authorization<'a> {
    /// Reads an `Authorization` value (RFC 9110 §11.6.2): `auth-scheme 1*( SP / HTAB ) credentials`, the scheme
    /// compared without regard to case.
    pub fn parse(value: &'a [u8]) -> Self {
        let value = value.trim_ascii();
        let scheme_end = value
            .iter()
            .position(|&b| is_blank(b))
            .unwrap_or(value.len());
        let (scheme, rest) = value.split_at(scheme_end);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Self::Other;
        }
        let token = rest.trim_ascii();
        if token.is_empty() || !token.iter().all(|b| b.is_ascii_graphic()) {
            return Self::MalformedBearer;
        }
        std::str::from_utf8(token).map_or(Self::MalformedBearer, Self::Bearer)
    }
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
        let authorization = first_authorization.map(|value| Authorization::parse(value.as_bytes()));
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
            (Some(Authorization::Other | Authorization::MalformedBearer), _) => {
                Err(CredentialError::MalformedAuthorization)
            }
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
    fn the_scheme_is_case_insensitive_and_spaces_or_tabs_follow_it() {
        for value in [
            &b"Bearer tg_abc"[..],
            b"bearer tg_abc",
            b"BEARER\ttg_abc",
            b"Bearer\t tg_abc",
            b"Bearer  tg_abc ",
            b" Bearer tg_abc\t",
        ] {
            assert_eq!(
                Authorization::parse(value),
                Authorization::Bearer("tg_abc"),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        for value in [
            &b"Bearer"[..],
            b"Bearer \t",
            b"Bearer tg_a\tb",
            b"Bearer tg_\xff",
        ] {
            assert_eq!(
                Authorization::parse(value),
                Authorization::MalformedBearer,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        for value in [
            &b"Basic dXNlcjpwdw=="[..],
            b"Bearertg_abc",
            b"",
            b"Digest\tx",
        ] {
            assert_eq!(Authorization::parse(value), Authorization::Other);
        }
    }

    #[test]
    fn other_spellings_of_our_header_names_are_aliases() {
        for alias in [
            "x_tollgate_org",
            "x-tollgate_org",
            "x_api_key",
            "x-api_key",
            "X_Api_Key",
        ] {
            assert!(is_alias_of_ours(alias), "{alias}");
        }
        for name in [
            "x-tollgate-org",
            "x-api-key",
            "x_api_keys",
            "x_tollgate_orgs",
            "x_request_id",
            "authorization",
        ] {
            assert!(!is_alias_of_ours(name), "{name}");
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
