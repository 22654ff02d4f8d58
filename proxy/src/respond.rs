//! Responses the proxy writes itself. Every refusal is a [`Refusal`], written by [`refuse`]: problem+json with the
//! kinds shared with the control plane (`common::problem`), `WWW-Authenticate` on 401, `Retry-After` on 503, and the
//! standard envelope with `Retry-After` and `RateLimit-*` on 429.

use crate::auth::AuthFailure;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use tollgate_common::domain::{DenyEnvelope, TargetError};
use tollgate_common::problem::{self, CONTENT_TYPE, Kind, Problem};

/// Why the proxy answers a request itself instead of proxying it.
#[derive(Debug)]
pub enum Refusal {
    /// The request breaks HTTP/1.1 in a way the proxy must refuse (400).
    BadRequest(&'static str),
    /// The request target stays ambiguous after canonicalisation (400): nothing charged, nothing forwarded.
    BadTarget(TargetError),
    /// No org could be identified (401, 403, 503).
    Auth(AuthFailure),
    /// The org's billing state cannot be loaded (503).
    BillingUnavailable,
    /// No plan admits metered calls for this org (402).
    SubscriptionRequired,
    /// Redis is down and the policy is fail-closed (503).
    QuotaUnavailable,
    /// Over quota (429).
    QuotaExceeded(DenyEnvelope),
    /// The upstream could not be reached or broke off (502).
    BadGateway,
    /// The upstream did not answer in time (504).
    GatewayTimeout,
    /// Our fault (500).
    Internal,
}

impl Refusal {
    /// The status, problem kind and detail.
    fn parts(&self) -> (u16, Kind, &'static str) {
        match self {
            Self::BadRequest(detail) => (400, problem::BAD_REQUEST, detail),
            Self::BadTarget(e) => (400, problem::BAD_REQUEST, e.detail()),
            Self::Auth(failure) => {
                let (status, detail) = failure.response();
                let kind = match status {
                    401 => problem::UNAUTHENTICATED,
                    403 => problem::FORBIDDEN,
                    _ => problem::UNAVAILABLE,
                };
                (status, kind, detail)
            }
            Self::BillingUnavailable => (
                503,
                problem::UNAVAILABLE,
                "billing state cannot be loaded right now; retry later",
            ),
            Self::SubscriptionRequired => (
                402,
                problem::SUBSCRIPTION_REQUIRED,
                "this organization has no subscription; start one to use metered endpoints",
            ),
            Self::QuotaUnavailable => (
                503,
                problem::QUOTA_UNAVAILABLE,
                "quota cannot be checked right now; retry later",
            ),
            // Written by `refuse` from the envelope itself.
            Self::QuotaExceeded(_) => (429, problem::QUOTA_EXCEEDED, ""),
            Self::BadGateway => (
                502,
                problem::BAD_GATEWAY,
                "the upstream API could not be reached",
            ),
            Self::GatewayTimeout => (
                504,
                problem::GATEWAY_TIMEOUT,
                "the upstream API did not answer in time",
            ),
            Self::Internal => (500, problem::INTERNAL, "the request could not be proxied"),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.parts().0
    }
}

/// Writes the response for `refusal`, ending the exchange.
pub async fn refuse(session: &mut Session, refusal: &Refusal) -> Result<()> {
    if let Refusal::QuotaExceeded(envelope) = refusal {
        let retry = envelope.retry_after.to_string();
        let headers = [
            ("retry-after", retry.clone()),
            ("ratelimit-limit", envelope.limit.to_string()),
            ("ratelimit-remaining", envelope.remaining().to_string()),
            ("ratelimit-reset", retry),
        ];
        return send(session, 429, &headers, envelope.to_json().into_bytes()).await;
    }
    let (status, kind, detail) = refusal.parts();
    let mut headers = Vec::new();
    match status {
        401 => headers.push(("www-authenticate", "Bearer".to_owned())),
        503 => headers.push(("retry-after", "1".to_owned())),
        _ => {}
    }
    let mut problem = Problem::of(status, kind, detail);
    if let Refusal::BadTarget(_) = refusal {
        problem = problem.with("field", "target");
    }
    send(session, status, &headers, problem.to_json()).await
}

/// Writes a complete response with `body`, closing the exchange.
async fn send(
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
