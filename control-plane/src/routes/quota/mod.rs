//! Quota checks and the denial envelope.

pub mod check;
pub mod deny_envelope;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tollgate_common::domain::DenyEnvelope;
use tollgate_common::problem::CONTENT_TYPE;

/// The 429 response: the standard envelope (built by `common`, byte-identical to the proxy's) and `Retry-After`.
pub fn quota_exceeded(envelope: &DenyEnvelope) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, envelope.to_json()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(envelope.retry_after));
    response
}
