//! Responses the proxy writes itself: problem+json errors and the 429 envelope.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use tollgate_common::domain::DenyEnvelope;
use tollgate_common::problem::{CONTENT_TYPE, Problem};

/// Writes a complete response with `body`, closing the exchange.
pub async fn send(
    session: &mut Session,
    status: u16,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(headers.len() + 2))?;
    header.insert_header("content-type", CONTENT_TYPE)?;
    header.insert_header("content-length", body.len().to_string())?;
    for (name, value) in headers {
        header.insert_header(*name, value.as_str())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// A problem+json error.
pub async fn problem(
    session: &mut Session,
    status: u16,
    kind: &'static str,
    title: &'static str,
    detail: &str,
) -> Result<()> {
    let body = Problem::new(status, kind, title, detail).to_json();
    let mut headers = Vec::new();
    match status {
        401 => headers.push(("www-authenticate", "Bearer".to_owned())),
        503 => headers.push(("retry-after", "1".to_owned())),
        _ => {}
    }
    send(session, status, &headers, body).await
}

/// The standard denial envelope with `Retry-After` and the `RateLimit-*` headers.
pub async fn quota_exceeded(session: &mut Session, envelope: &DenyEnvelope) -> Result<()> {
    let retry = envelope.retry_after.to_string();
    let headers = [
        ("retry-after", retry.clone()),
        ("ratelimit-limit", envelope.limit.to_string()),
        ("ratelimit-remaining", envelope.remaining().to_string()),
        ("ratelimit-reset", retry),
    ];
    send(session, 429, &headers, envelope.to_json().into_bytes()).await
}
