//! Reading the credential a request presents, the one way both binaries do it: `Authorization: Bearer <token>`
//! first, else `X-Api-Key`. What the token is (operator token, API key, session JWT) is the caller's business.

use http::HeaderMap;

/// The credential header a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <token>`, trimmed.
    Bearer(&'a str),
    /// `X-Api-Key: <key>`, trimmed.
    XApiKey(&'a str),
}

/// Why no credential could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Neither header is present.
    #[error("credentials are required: Authorization: Bearer <token> or X-Api-Key")]
    Missing,
    /// `Authorization` is present but not `Bearer <token>`.
    #[error("Authorization: expected `Bearer <token>`")]
    MalformedAuthorization,
    /// `X-Api-Key` is not a valid header value.
    #[error("X-Api-Key: not a valid header value")]
    MalformedApiKey,
}

/// The request's credential.
pub fn from_headers(headers: &HeaderMap) -> Result<Credential<'_>, CredentialError> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| CredentialError::MalformedAuthorization)?;
        let (scheme, token) = value
            .split_once(' ')
            .ok_or(CredentialError::MalformedAuthorization)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(CredentialError::MalformedAuthorization);
        }
        return Ok(Credential::Bearer(token));
    }
    match headers.get("x-api-key") {
        Some(v) => Ok(Credential::XApiKey(
            v.to_str()
                .map_err(|_| CredentialError::MalformedApiKey)?
                .trim(),
        )),
        None => Err(CredentialError::Missing),
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
        assert_eq!(
            from_headers(&headers(&[
                ("authorization", "Bearer a"),
                ("x-api-key", "tg_b")
            ])),
            Ok(Credential::Bearer("a")),
            "Authorization wins"
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
}
