//! The control plane's one error type, mapped once to RFC 9457 problem+json.
//!
//! Handlers and services return [`ApiError`]; nothing else writes an error response. 5xx causes are logged here,
//! once, with their internal detail; the client sees only a generic detail.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tollgate_common::domain::{DenyEnvelope, RateLimitEnvelope};
use tollgate_common::problem::{self, CONTENT_TYPE, Problem};

/// Every way a control-plane request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credential, or one that does not verify.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A valid credential that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A Clerk user whose org role may not change the org (403 with `requiredRoles`).
    #[error("{}", role_detail(required, held.as_deref()))]
    RoleRequired {
        /// Any one of these would do.
        required: crate::auth::AdminRoles,
        /// The session's role, if it has one.
        held: Option<String>,
    },
    /// The body is not JSON at all.
    #[error("{detail}")]
    MalformedBody { detail: String },
    /// A field is missing, of the wrong type, unknown, or out of range.
    #[error("{field}: {detail}")]
    InvalidField { field: String, detail: String },
    /// The body is larger than the configured limit.
    #[error("body: larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A body that is not JSON by its content type.
    #[error("Content-Type: expected application/json")]
    UnsupportedMediaType,
    /// The client did not send its body in time.
    #[error("body: not received within the time allowed")]
    RequestTimeout,
    /// The thing named by `field` does not exist (or is not the caller's).
    #[error("{field}: {detail}")]
    NotFound { field: &'static str, detail: String },
    /// No such route.
    #[error("no such endpoint")]
    NoRoute,
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The org has no plan that allows this (no subscription and no `unsubscribed` plan).
    #[error("{0}")]
    PaymentRequired(String),
    /// The request conflicts with stored state.
    #[error("{field}: {detail}")]
    Conflict { field: &'static str, detail: String },
    /// Something else is in progress (another billing change of the org, a request with the same
    /// `Idempotency-Key`): 409 now, a retry later may succeed, so the answer is never stored as final.
    #[error("{field}: {detail}")]
    InProgress { field: &'static str, detail: String },
    /// The org called an endpoint group more often than its rate limit allows (429, the rate-limit envelope).
    #[error("rate limited")]
    RateLimited(RateLimitEnvelope),
    /// The org used up a metric (429 with `Retry-After`: the standard denial envelope, built by `common` and
    /// byte-identical to the proxy's).
    #[error("quota exceeded")]
    QuotaExceeded(DenyEnvelope),
    /// A diagnostic check failed (503 `/problems/dependency-unavailable` with the report: `ok`, `failing`,
    /// `checks`; no `Retry-After`, the report says what to fix).
    #[error("{detail}")]
    DependenciesFailing {
        /// "name: error" of each failing check, joined by "; ".
        detail: String,
        /// The failing checks' names.
        failing: Vec<&'static str>,
        /// Every check, as the diagnostic reports it.
        checks: serde_json::Value,
    },
    /// A dependency is down; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A required setting is missing, so the feature is off (503 naming it).
    #[error("{0} is not set: this endpoint needs it")]
    NotConfigured(&'static str),
    /// A request header or body that is not what it must be (400), e.g. a bad `Stripe-Signature`.
    #[error("{field}: {detail}")]
    BadRequest { field: &'static str, detail: String },
    /// Stripe declined a card or a payment (402, Stripe's message).
    #[error("{0}")]
    PaymentFailed(String),
    /// Stripe refused a request made for the caller (422, Stripe's message).
    #[error("{0}")]
    StripeRefused(String),
    /// A dependency answered something we cannot use (502). `cause` is logged, never sent.
    #[error("{detail}")]
    BadGateway { detail: String, cause: String },
    /// PostgreSQL failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    /// Anything else: a bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// 404 naming `orgId`: Tollgate does not know the org.
    pub fn unknown_org() -> Self {
        Self::NotFound {
            field: "orgId",
            detail: "no such organization; create it with /api/orgs.create".to_owned(),
        }
    }

    /// Bad input naming `field`. A `detail` that already starts with `field: ` (a domain error's message) is not
    /// prefixed twice.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = detail.into();
        let detail = match detail
            .strip_prefix(field.as_str())
            .and_then(|rest| rest.strip_prefix(": "))
        {
            Some(rest) => rest.to_owned(),
            None => detail,
        };
        Self::InvalidField { field, detail }
    }

    /// Whether this answer says something final about the request, so that a repeated `Idempotency-Key` may
    /// replay it: not for credentials, timing, rate limits, work in progress or any 5xx.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Self::Unauthenticated(_)
                | Self::Forbidden(_)
                | Self::RoleRequired { .. }
                | Self::RequestTimeout
                | Self::RateLimited(_)
                | Self::QuotaExceeded(_)
                | Self::InProgress { .. }
        ) && !self.status().is_server_error()
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::RoleRequired { .. } => StatusCode::FORBIDDEN,
            Self::MalformedBody { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound { .. } | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            Self::Conflict { .. } | Self::InProgress { .. } => StatusCode::CONFLICT,
            Self::RateLimited(_) | Self::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_)
            | Self::Redis(_)
            | Self::NotConfigured(_)
            | Self::DependenciesFailing { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PaymentFailed(_) => StatusCode::PAYMENT_REQUIRED,
            Self::StripeRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Self::Database(e) if is_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> Problem {
        let status = self.status().as_u16();
        let p = |kind, detail: String| Problem::of(status, kind, detail);
        match self {
            Self::Unauthenticated(d) => p(problem::UNAUTHENTICATED, (*d).to_owned()),
            Self::Forbidden(d) => p(problem::FORBIDDEN, d.clone()),
            Self::RoleRequired { required, .. } => {
                p(problem::FORBIDDEN, self.to_string()).with("requiredRoles", required.names())
            }
            Self::MalformedBody { detail } => {
                p(problem::MALFORMED_BODY, detail.clone()).with("field", "body")
            }
            Self::InvalidField { field, .. } => {
                p(problem::INVALID_FIELD, self.to_string()).with("field", field.as_str())
            }
            Self::PayloadTooLarge { .. } => {
                p(problem::PAYLOAD_TOO_LARGE, self.to_string()).with("field", "body")
            }
            Self::UnsupportedMediaType => {
                p(problem::UNSUPPORTED_MEDIA_TYPE, self.to_string()).with("field", "Content-Type")
            }
            Self::RequestTimeout => {
                p(problem::REQUEST_TIMEOUT, self.to_string()).with("field", "body")
            }
            Self::NotFound { field, .. } => {
                p(problem::NOT_FOUND, self.to_string()).with("field", *field)
            }
            Self::NoRoute => p(problem::NOT_FOUND, self.to_string()),
            Self::MethodNotAllowed => p(problem::METHOD_NOT_ALLOWED, self.to_string()),
            Self::PaymentRequired(d) => p(problem::SUBSCRIPTION_REQUIRED, d.clone()),
            Self::Conflict { field, .. } | Self::InProgress { field, .. } => {
                p(problem::CONFLICT, self.to_string()).with("field", *field)
            }
            // Sent as its own envelope by `into_response`; this form only serves callers of `problem`.
            Self::RateLimited(envelope) => p(
                problem::RATE_LIMITED,
                format!("retry in {} s", envelope.retry_after),
            ),
            // Sent as the denial envelope by `into_response`; this form only serves callers of `problem`.
            Self::QuotaExceeded(envelope) => p(
                problem::RATE_LIMITED,
                format!("retry in {} s", envelope.retry_after),
            ),
            Self::DependenciesFailing {
                detail,
                failing,
                checks,
            } => Problem::new(
                status,
                "/problems/dependency-unavailable",
                "Dependency unavailable",
                detail.clone(),
            )
            .with("ok", false)
            .with("failing", failing.clone())
            .with("checks", checks.clone()),
            Self::Unavailable(d) => p(problem::UNAVAILABLE, d.clone()),
            Self::NotConfigured(setting) => {
                p(problem::UNAVAILABLE, self.to_string()).with("setting", *setting)
            }
            Self::BadRequest { field, .. } => {
                p(problem::BAD_REQUEST, self.to_string()).with("field", *field)
            }
            Self::PaymentFailed(d) => p(problem::PAYMENT_FAILED, d.clone()),
            Self::StripeRefused(d) => p(problem::STRIPE_REFUSED, d.clone()),
            Self::BadGateway { detail, .. } => p(problem::BAD_GATEWAY, detail.clone()),
            Self::Redis(_) => p(
                problem::UNAVAILABLE,
                "redis is unavailable; retry later".to_owned(),
            ),
            Self::Database(e) if is_unavailable(e) => p(
                problem::UNAVAILABLE,
                "the database is unavailable; retry later".to_owned(),
            ),
            Self::Database(_) | Self::Internal(_) => p(
                problem::INTERNAL,
                "an internal error occurred; it has been logged".to_owned(),
            ),
        }
    }
}

/// "this action needs the organization role org:admin; the session's role is org:member".
fn role_detail(required: &crate::auth::AdminRoles, held: Option<&str>) -> String {
    let names = required.names();
    let needs = match names {
        [one] => format!("the organization role {one}"),
        _ => format!("one of the organization roles {}", names.join(", ")),
    };
    let has = match held {
        Some(role) => format!("the session's role is {role}"),
        None => "the session has no organization role".to_owned(),
    };
    format!("this action changes the organization and needs {needs}; {has}")
}

/// Failures where PostgreSQL could not be reached, as opposed to a query that failed.
fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Database(e) => tracing::error!(error = %e, "database failure"),
            Self::Redis(e) => tracing::error!(error = %e, "redis failure"),
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal failure"),
            Self::BadGateway { cause, .. } => {
                tracing::error!(error = %cause, "a dependency's answer could not be used");
            }
            _ if status.is_server_error() => tracing::warn!(error = %self, "request failed"),
            _ => tracing::debug!(http.status = status.as_u16(), error = %self, "request refused"),
        }
        let body = match &self {
            Self::RateLimited(envelope) => envelope.to_json().into_bytes(),
            Self::QuotaExceeded(envelope) => envelope.to_json().into_bytes(),
            _ => self.problem().to_json(),
        };
        let mut response = (status, body).into_response();
        if !self.is_final() {
            response
                .extensions_mut()
                .insert(crate::idempotency::NotFinal);
        }
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE
            && !matches!(self, Self::DependenciesFailing { .. })
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::RateLimited(envelope) = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(envelope.retry_after));
        }
        if let Self::QuotaExceeded(envelope) = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(envelope.retry_after));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // RFC 9110 §15.5.9: the server closes a connection whose request it timed out.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The result type of handlers and services.
pub type ApiResult<T> = Result<T, ApiError>;

// === from the services ===

impl From<crate::services::billing::BillingError> for ApiError {
    fn from(e: crate::services::billing::BillingError) -> Self {
        use crate::services::billing::BillingError as B;
        use crate::stripe::StripeError as S;
        match e {
            B::NotConfigured(setting) => Self::NotConfigured(setting),
            B::UnknownOrg => Self::unknown_org(),
            B::Invalid { field, detail } => Self::invalid(field, detail),
            B::Conflict { field, detail } => Self::Conflict { field, detail },
            e @ B::ChangeInProgress => Self::InProgress {
                field: "orgId",
                detail: e.to_string().trim_start_matches("orgId: ").to_owned(),
            },
            e @ B::TooSlow => Self::Unavailable(e.to_string()),
            B::NotFound { field, detail } => Self::NotFound { field, detail },
            B::BadWebhook { field, detail } => Self::BadRequest { field, detail },
            B::Stripe(S::Refused { kind, message, .. }) if kind == "card_error" => {
                Self::PaymentFailed(message)
            }
            B::Stripe(S::Refused { message, .. }) => Self::StripeRefused(message),
            B::Stripe(S::Unavailable(_)) => Self::Unavailable(
                "Stripe is unavailable; nothing was changed; retry later".to_owned(),
            ),
            B::Stripe(e @ S::DoneUnreadable(_)) => Self::BadGateway {
                detail: "done in Stripe, but Stripe's answer could not be read; the mirror converges through its \
                         webhook"
                    .to_owned(),
                cause: e.to_string(),
            },
            B::Stripe(e @ (S::Unauthorized | S::Unreadable(_))) => Self::BadGateway {
                detail: "Stripe's answer could not be used; nothing was changed".to_owned(),
                cause: e.to_string(),
            },
            B::Unmirrorable(detail) | B::NotOurs { detail, .. } => Self::BadGateway {
                detail: format!("Stripe's state cannot be mirrored: {detail}"),
                cause: detail,
            },
            B::Database(e) => Self::Database(e),
        }
    }
}

impl From<crate::services::stigg::StiggMirrorError> for ApiError {
    fn from(e: crate::services::stigg::StiggMirrorError) -> Self {
        use crate::services::stigg::StiggMirrorError as M;
        match e {
            M::UnknownOrg => Self::unknown_org(),
            M::Invalid { field, detail } => Self::invalid(field, detail),
            M::Database(e) => Self::Database(e),
        }
    }
}

impl From<crate::services::outbound::OutboundError> for ApiError {
    fn from(e: crate::services::outbound::OutboundError) -> Self {
        use crate::services::outbound::OutboundError as O;
        match e {
            O::UnknownOrg => Self::unknown_org(),
            O::Invalid { field, detail } => Self::invalid(field, detail),
            O::NotConfigured(setting) => Self::NotConfigured(setting),
            e @ O::Sealed => Self::Internal(e.into()),
            O::Database(e) => Self::Database(e),
        }
    }
}

impl From<crate::services::keys::KeysError> for ApiError {
    fn from(e: crate::services::keys::KeysError) -> Self {
        use crate::services::keys::KeysError as K;
        match e {
            K::UnknownOrg => Self::unknown_org(),
            K::UnknownKey => Self::NotFound {
                field: "keyId",
                detail: "no such key in this organization".to_owned(),
            },
            e @ K::NotAnnounced(_) => Self::Unavailable(e.to_string()),
            e @ K::Corrupt(_) => Self::Internal(e.into()),
            K::Database(e) => Self::Database(e),
        }
    }
}

impl From<crate::services::usage::UsageError> for ApiError {
    fn from(e: crate::services::usage::UsageError) -> Self {
        use crate::services::usage::UsageError as U;
        match e {
            U::UnknownOrg => Self::unknown_org(),
            e @ U::NoSubscription => Self::PaymentRequired(e.to_string()),
            U::Invalid { field, detail } => Self::invalid(field, detail),
            U::Conflict { field, detail } => Self::Conflict { field, detail },
            U::Exceeded(envelope) => Self::QuotaExceeded(envelope),
            e @ U::NotRecorded => Self::Unavailable(e.to_string()),
            U::Counter(e) => e.into(),
            U::Database(e) => Self::Database(e),
            U::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<tollgate_common::store::counters::CounterError> for ApiError {
    fn from(e: tollgate_common::store::counters::CounterError) -> Self {
        use tollgate_common::store::counters::CounterError as C;
        match e {
            C::Redis(e) => Self::Redis(e),
            C::Postgres(e) => Self::Database(e),
            C::Protocol => Self::Internal(anyhow::anyhow!("unexpected reply from a quota script")),
        }
    }
}

#[cfg(test)]
mod stripe_answer_tests {
    use super::*;
    use crate::services::billing::BillingError;
    use crate::stripe::StripeError;

    /// A change Stripe made whose answer could not be read is reported as done (converging through the webhook),
    /// never as "nothing was changed"; an unreadable answer to a read still says nothing was changed.
    #[test]
    fn an_unreadable_answer_to_a_change_says_done_in_stripe() {
        let done = ApiError::from(BillingError::Stripe(StripeError::DoneUnreadable(
            "status: unknown variant".to_owned(),
        )));
        assert_eq!(done.status(), StatusCode::BAD_GATEWAY);
        let ApiError::BadGateway { detail, .. } = &done else {
            panic!("{done:?}");
        };
        assert!(detail.contains("done in Stripe"), "{detail}");
        assert!(detail.contains("converges through its webhook"), "{detail}");
        assert!(!detail.contains("nothing was changed"), "{detail}");
        let read = ApiError::from(BillingError::Stripe(StripeError::Unreadable(
            "status: unknown variant".to_owned(),
        )));
        let ApiError::BadGateway { detail, .. } = &read else {
            panic!("{read:?}");
        };
        assert!(detail.contains("nothing was changed"), "{detail}");
    }
}

#[cfg(test)]
mod rendering_tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use tollgate_common::domain::{Metric, Period};

    async fn body(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec()
    }

    /// The quota 429 is the denial envelope byte for byte (the proxy's), as problem+json with `Retry-After`, and
    /// never stored as an idempotent answer.
    #[tokio::test]
    async fn a_used_up_metric_is_the_standard_envelope_with_retry_after() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 20, 12, 0, 0)
            .single()
            .expect("instant");
        let metric = Metric::parse(Metric::API_CALL).expect("metric");
        let envelope = DenyEnvelope::new(metric, 100, 100, &Period::calendar_month(now), now);
        let expected = envelope.to_json().into_bytes();
        let retry_after = envelope.retry_after.to_string();
        let response = ApiError::QuotaExceeded(envelope).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(headers[header::RETRY_AFTER], retry_after.as_str());
        assert!(
            response
                .extensions()
                .get::<crate::idempotency::NotFinal>()
                .is_some()
        );
        assert_eq!(body(response).await, expected);
    }

    /// The diagnostic's 503 names the failing checks in the problem body and sends no `Retry-After`.
    #[tokio::test]
    async fn failing_dependencies_are_a_problem_naming_them_without_retry_after() {
        let response = ApiError::DependenciesFailing {
            detail: "redis: connection refused".to_owned(),
            failing: vec!["redis"],
            checks: serde_json::json!({"redis": {"ok": false}}),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let body: serde_json::Value = serde_json::from_slice(&body(response).await).expect("json");
        assert_eq!(body["type"], "/problems/dependency-unavailable");
        assert_eq!(body["title"], "Dependency unavailable");
        assert_eq!(body["status"], 503);
        assert_eq!(body["detail"], "redis: connection refused");
        assert_eq!(body["ok"], false);
        assert_eq!(body["failing"], serde_json::json!(["redis"]));
        assert_eq!(body["checks"]["redis"]["ok"], false);
    }
}
