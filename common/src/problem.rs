//! RFC 9457 problem details: the single error body both binaries send.

use serde::Serialize;
use serde_json::{Map, Value};

/// The media type of every error response.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem type: its `type` URI and `title`. Both binaries take their kinds from here, so one failure reads the
/// same whichever process answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// The `type` member.
    pub uri: &'static str,
    /// The `title` member.
    pub title: &'static str,
}

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $uri:literal, $title:literal;)*) => {
        $($(#[$doc])* pub const $name: Kind = Kind { uri: $uri, title: $title };)*
    };
}

kinds! {
    /// No or bad credentials (401).
    UNAUTHENTICATED = "/problems/unauthenticated", "Unauthenticated";
    /// A credential that may not do this (403).
    FORBIDDEN = "/problems/forbidden", "Forbidden";
    /// A request that cannot be read as HTTP or JSON (400).
    BAD_REQUEST = "/problems/bad-request", "Bad request";
    /// A body that is not a JSON object (400).
    MALFORMED_BODY = "/problems/malformed-body", "Malformed body";
    /// A missing, unknown or invalid field (422).
    INVALID_FIELD = "/problems/invalid-field", "Invalid field";
    /// A body above the limit (413).
    PAYLOAD_TOO_LARGE = "/problems/payload-too-large", "Payload too large";
    /// A body that is not JSON by its content type (415).
    UNSUPPORTED_MEDIA_TYPE = "/problems/unsupported-media-type", "Unsupported media type";
    /// A client too slow to send its request (408).
    REQUEST_TIMEOUT = "/problems/request-timeout", "Request timeout";
    /// No such resource or route (404).
    NOT_FOUND = "/problems/not-found", "Not found";
    /// Wrong method (405).
    METHOD_NOT_ALLOWED = "/problems/method-not-allowed", "Method not allowed";
    /// No plan admits the call (402).
    SUBSCRIPTION_REQUIRED = "/problems/subscription-required", "Subscription required";
    /// Over quota (429): the standard denial envelope.
    QUOTA_EXCEEDED = "/problems/quota-exceeded", "Quota exceeded";
    /// Too many calls of one org to an endpoint group (429): the rate-limit envelope.
    RATE_LIMITED = "/problems/rate-limited", "Too many requests";
    /// A card was declined or a payment failed at Stripe (402).
    PAYMENT_FAILED = "/problems/payment-failed", "Payment failed";
    /// Stripe refused a request on the caller's behalf (422): its message says why.
    STRIPE_REFUSED = "/problems/stripe-refused", "Refused by Stripe";
    /// Conflicts with stored state (409).
    CONFLICT = "/problems/conflict", "Conflict";
    /// A dependency is down (503).
    UNAVAILABLE = "/problems/unavailable", "Service unavailable";
    /// Quota cannot be checked while Redis is down and the policy is fail-closed (503).
    QUOTA_UNAVAILABLE = "/problems/quota-unavailable", "Quota unavailable";
    /// The upstream could not be reached or failed (502).
    BAD_GATEWAY = "/problems/bad-gateway", "Bad gateway";
    /// The upstream did not answer in time (504).
    GATEWAY_TIMEOUT = "/problems/gateway-timeout", "Gateway timeout";
    /// Our fault (500).
    INTERNAL = "/problems/internal", "Internal error";
}

/// One problem+json body. `extensions` are extra members flattened beside the standard ones.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// A URI reference naming the problem type, e.g. `/problems/invalid-field`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short, human-readable summary of the problem type.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence; names the field at fault for bad input.
    pub detail: String,
    /// Additional members (e.g. `field`, `checks`).
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    /// A problem of `kind` without extension members.
    pub fn of(status: u16, kind: Kind, detail: impl Into<String>) -> Self {
        Self::new(status, kind.uri, kind.title, detail)
    }

    /// A problem without extension members.
    pub fn new(
        status: u16,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            title,
            status,
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    /// Adds one extension member.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    /// The serialized body. Serializing these plain fields cannot fail; an empty object is the fallback.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_standard_members_then_extensions() {
        let p = Problem::new(
            422,
            "/problems/invalid-field",
            "Invalid field",
            "name: must not be empty",
        )
        .with("field", "name");
        let v: Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"/problems/invalid-field","title":"Invalid field","status":422,
                "detail":"name: must not be empty","field":"name"})
        );
    }
}
