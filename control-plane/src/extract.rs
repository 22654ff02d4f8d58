//! Request extractors whose failures are [`ApiError`]s naming the field at fault.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A JSON body deserialized into `T`. Field errors carry the JSON path of the field.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(crate::config::DEFAULT_BODY_LIMIT, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedBody {
                    detail: "body: could not be read".to_owned(),
                }
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// The configured body limit, placed in request extensions so rejections can state it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Deserializes `bytes` as `T`, mapping errors to the field they concern.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also accept an array for a struct (fields by position); bodies are objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::MalformedBody {
            detail: "body: a JSON object is required".to_owned(),
        });
    }
    // Syntax first: a body that is not JSON is a 400 whatever fields it happens to start with.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::MalformedBody {
            detail: format!("body: not valid JSON ({})", strip_position(&e.to_string())),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| field_error(&e))?;
    de.end().map_err(|_| ApiError::MalformedBody {
        detail: "body: trailing characters after the JSON value".to_owned(),
    })?;
    Ok(value)
}

fn field_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    let message = strip_position(&inner.to_string());
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::MalformedBody {
            detail: format!("body: not valid JSON ({message})"),
        };
    }
    let path = e.path().to_string();
    let field = if path == "." || path.is_empty() {
        // Missing and unknown fields are reported at the parent: the name is in the message.
        backticked(&message).unwrap_or_else(|| "body".to_owned())
    } else if let Some(name) = message
        .starts_with("missing field")
        .then(|| backticked(&message))
        .flatten()
    {
        format!("{path}.{name}")
    } else {
        path
    };
    let detail = message
        .split_once(", expected one of")
        .map_or(message.as_str(), |(head, _)| head)
        .to_owned();
    ApiError::InvalidField { field, detail }
}

/// serde_json appends " at line 1 column 12"; the field name says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// Query parameters deserialized into `T`, with errors naming the parameter.
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let message = e.inner().to_string();
                let path = e.path().to_string();
                let field = if path == "." {
                    backticked(&message).unwrap_or_else(|| "query".to_owned())
                } else {
                    path
                };
                ApiError::InvalidField {
                    field,
                    detail: message,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Body {
        #[expect(dead_code)]
        org_id: String,
        #[expect(dead_code)]
        count: u32,
    }

    fn field_of(json: &str) -> (String, String) {
        match parse::<Body>(json.as_bytes()).unwrap_err() {
            ApiError::InvalidField { field, detail } => (field, detail),
            ApiError::MalformedBody { detail } => ("body".to_owned(), detail),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn names_the_field_at_fault() {
        assert_eq!(field_of(r#"{"orgId":"x"}"#).0, "count");
        assert_eq!(field_of(r#"{"orgId":5,"count":1}"#).0, "orgId");
        assert_eq!(field_of(r#"{"orgId":"x","count":-1}"#).0, "count");
        assert_eq!(field_of(r#"{"orgId":"x","count":1,"extra":1}"#).0, "extra");
        assert_eq!(field_of(r#"{"orgId":"x""#).0, "body");
        assert_eq!(field_of("").0, "body");
        assert_eq!(field_of("[]").0, "body");
        assert_eq!(field_of(r#"{"orgId":"x","count":1} {}"#).0, "body");
    }

    #[test]
    fn details_do_not_leak_positions() {
        let (_, detail) = field_of(r#"{"orgId":5,"count":1}"#);
        assert!(!detail.contains("line"), "{detail}");
    }
}
