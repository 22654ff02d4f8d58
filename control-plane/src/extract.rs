//! Request extractors whose failures are [`ApiError`]s naming the field at fault.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// A JSON body deserialized into `T`. Field errors carry the JSON path of the field.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let rules = req
            .extensions()
            .get::<BodyRules>()
            .copied()
            .unwrap_or_default();
        let bytes = read_body(req, rules).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// How much body a request may send, and how fast; placed in request extensions by the router.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// Largest body in bytes (413 above).
    pub limit: usize,
    /// Time allowed for the whole body to arrive (408 after).
    pub timeout: Duration,
}

impl Default for BodyRules {
    fn default() -> Self {
        Self {
            limit: crate::config::DEFAULT_BODY_LIMIT,
            timeout: Duration::from_millis(crate::config::DEFAULT_BODY_TIMEOUT_MS),
        }
    }
}

/// How much of a refused oversized body is read and discarded so that the client, still sending, reads the 413
/// instead of a connection reset (closing a socket with unread data makes the kernel answer with RST).
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;
/// How long draining may take.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads a request's body within `rules`: 413 above the limit (after draining a bounded amount), 408 when it does
/// not arrive in time, 400 when the stream breaks.
pub async fn read_body(req: Request, rules: BodyRules) -> Result<Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit: rules.limit };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut stream = req.into_body().into_data_stream();
    if declared.is_some_and(|n| n > rules.limit as u64) {
        // A client waiting for `100 Continue` sends nothing more once it reads the final status.
        if !expects_continue {
            drain(&mut stream, rules.timeout).await;
        }
        return Err(too_large);
    }
    let deadline = tokio::time::Instant::now() + rules.timeout;
    let mut body = bytes::BytesMut::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| ApiError::RequestTimeout)?;
        match next {
            None => return Ok(body.freeze()),
            Some(Ok(chunk)) => {
                if body.len() + chunk.len() > rules.limit {
                    drain(&mut stream, rules.timeout).await;
                    return Err(too_large);
                }
                body.extend_from_slice(&chunk);
            }
            Some(Err(_)) => {
                return Err(ApiError::MalformedBody {
                    detail: "body: could not be read".to_owned(),
                });
            }
        }
    }
}

/// Reads and discards up to [`DRAIN_LIMIT`] bytes for at most [`DRAIN_TIME`] (or `timeout`, if shorter).
async fn drain(stream: &mut axum::body::BodyDataStream, timeout: Duration) {
    let mut drained = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME.min(timeout), async {
        while drained < DRAIN_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => drained += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}

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
    ApiError::invalid(field, detail)
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

/// For optional body fields that may be omitted but not sent as `null`: `#[serde(default, deserialize_with =
/// "non_null")]`. Omitting the field means "the default" (e.g. the caller's own org); an explicit `null` is a type
/// error naming the field, as the document (which does not make the field nullable) says.
pub fn non_null<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(de).map(Some)
}

/// For every request field the document types as `integer`: `#[serde(deserialize_with =
/// "crate::extract::integer")]` (with `default` on an `Option`), on any integer type, an `Option` or a `Vec` of one.
///
/// JSON Schema's `integer` is any number whose fractional part is zero, so `-65`, `-65.0` and `-6.5e1` are all -65
/// and a client that validates against the document may send any of them; serde would refuse all but the first.
/// A fraction (`1.5`), a string, or a value outside the field's type is the usual 422 naming the field. A number
/// written with a fraction or exponent above 2^53 in size is refused too: as a float it is not exact, so the
/// server cannot know which integer was meant.
pub fn integer<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Integral,
{
    T::deserialize_integral(de)
}

/// A type [`integer`] can fill: the integer types, and `Option`s and `Vec`s of them.
pub trait Integral: Sized {
    /// Deserializes an integer-valued number (or several, or none).
    fn deserialize_integral<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error>;
}

/// The largest magnitude a float holds exactly as an integer.
const EXACT_FLOAT_MAX: f64 = 9_007_199_254_740_992.0;

struct IntegerVisitor<T> {
    min: i128,
    max: i128,
    _type: std::marker::PhantomData<T>,
}

impl<T> serde::de::Visitor<'_> for IntegerVisitor<T>
where
    T: TryFrom<i64> + TryFrom<u64>,
{
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an integer from {} to {}", self.min, self.max)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        // NaN and the infinities have no zero fraction either.
        if v.fract() != 0.0 {
            return Err(E::invalid_value(
                serde::de::Unexpected::Float(v),
                &"an integer",
            ));
        }
        if v.abs() > EXACT_FLOAT_MAX {
            return Err(E::invalid_value(
                serde::de::Unexpected::Float(v),
                &"an integer written without a fraction or exponent (above 2^53 a float is not exact)",
            ));
        }
        #[expect(
            clippy::cast_possible_truncation,
            reason = "checked: a whole number within 2^53 of zero"
        )]
        self.visit_i64(v as i64)
    }
}

macro_rules! integral {
    ($($t:ty),*) => {$(
        impl Integral for $t {
            fn deserialize_integral<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
                // `f64` is only a hint: serde_json hands over the number as written (an integer literal exactly,
                // `-65.0` or `1e3` as a float) and refuses anything else; serde_urlencoded parses the query's text
                // as a float, so a query's `5.0` is 5 too.
                de.deserialize_f64(IntegerVisitor::<$t> {
                    min: i128::from(<$t>::MIN),
                    max: i128::from(<$t>::MAX),
                    _type: std::marker::PhantomData,
                })
            }
        }
    )*};
}

integral!(u8, u16, u32, u64, i16, i32, i64);

/// One element of an `Option` or a `Vec`, read by [`Integral`].
struct Element<T>(T);

impl<'de, T: Integral> Deserialize<'de> for Element<T> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        T::deserialize_integral(de).map(Element)
    }
}

impl<T: Integral> Integral for Option<T> {
    fn deserialize_integral<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Option::<Element<T>>::deserialize(de).map(|v| v.map(|Element(v)| v))
    }
}

impl<T: Integral> Integral for Vec<T> {
    fn deserialize_integral<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Vec::<Element<T>>::deserialize(de).map(|v| v.into_iter().map(|Element(v)| v).collect())
    }
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
                ApiError::invalid(field, message)
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

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Numbers {
        #[serde(deserialize_with = "integer")]
        count: u64,
        #[serde(default, deserialize_with = "integer")]
        small: Option<u8>,
        #[serde(default, deserialize_with = "integer")]
        ids: Vec<i64>,
    }

    fn numbers(json: &str) -> Result<Numbers, (String, String)> {
        parse::<Numbers>(json.as_bytes()).map_err(|e| match e {
            ApiError::InvalidField { field, detail } => (field, detail),
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn integers_may_be_written_as_integral_numbers() {
        for (json, count) in [
            (r#"{"count":5}"#, 5),
            (r#"{"count":5.0}"#, 5),
            (r#"{"count":1e3}"#, 1000),
            (r#"{"count":1.5e1}"#, 15),
            (r#"{"count":-0.0}"#, 0),
            (r#"{"count":18446744073709551615}"#, u64::MAX),
            (r#"{"count":9007199254740992.0}"#, 9_007_199_254_740_992),
        ] {
            assert_eq!(numbers(json).unwrap().count, count, "{json}");
        }
        let n = numbers(r#"{"count":1,"small":255.0,"ids":[-65.0,7,-6.5e1,9223372036854775807]}"#)
            .unwrap();
        assert_eq!(n.small, Some(255));
        assert_eq!(n.ids, [-65, 7, -65, i64::MAX]);
        let n = numbers(r#"{"count":1,"small":null}"#).unwrap();
        assert_eq!((n.small, n.ids.len()), (None, 0));
    }

    #[test]
    fn fractions_strings_and_out_of_range_values_name_the_field() {
        for (json, field) in [
            (r#"{"count":1.5}"#, "count"),
            (r#"{"count":-1}"#, "count"),
            (r#"{"count":-1.0}"#, "count"),
            (r#"{"count":"5"}"#, "count"),
            (r#"{"count":null}"#, "count"),
            (r#"{"count":true}"#, "count"),
            (r#"{"count":1e20}"#, "count"),
            (r#"{"count":9007199254740994.0}"#, "count"),
            (r#"{"count":1,"small":256}"#, "small"),
            (r#"{"count":1,"small":2.5}"#, "small"),
            (r#"{"count":1,"ids":[1,-65.5]}"#, "ids[1]"),
            (r#"{"count":1,"ids":["1"]}"#, "ids[0]"),
        ] {
            let (at, detail) = numbers(json).unwrap_err();
            assert_eq!(at, field, "{json}: {detail}");
        }
        let (_, detail) = numbers(r#"{"count":1.5}"#).unwrap_err();
        assert_eq!(
            detail,
            "invalid value: floating point `1.5`, expected an integer"
        );
        let (_, detail) = numbers(r#"{"count":1,"small":300}"#).unwrap_err();
        assert_eq!(
            detail,
            "invalid value: integer `300`, expected an integer from 0 to 255"
        );
    }

    #[test]
    fn query_integers_may_be_written_as_integral_numbers() {
        #[derive(Debug, Deserialize)]
        struct Query {
            #[serde(default, deserialize_with = "integer")]
            limit: Option<u8>,
        }
        let limit = |q: &str| serde_urlencoded::from_str::<Query>(q).map(|q| q.limit);
        assert_eq!(limit("limit=5").unwrap(), Some(5));
        assert_eq!(limit("limit=5.0").unwrap(), Some(5));
        assert_eq!(limit("limit=1e2").unwrap(), Some(100));
        assert_eq!(limit("").unwrap(), None);
        for bad in [
            "limit=1.5",
            "limit=300",
            "limit=-1",
            "limit=abc",
            "limit=",
            "limit=NaN",
            "limit=inf",
        ] {
            assert!(limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn details_do_not_leak_positions() {
        let (_, detail) = field_of(r#"{"orgId":5,"count":1}"#);
        assert!(!detail.contains("line"), "{detail}");
    }
}
