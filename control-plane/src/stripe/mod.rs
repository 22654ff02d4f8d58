//! The one Stripe client.
//!
//! Requests and responses are async-stripe 1.0's types (its split crates, only the resources the billing flows
//! use); the transport is ours, so that every call is made the same way:
//!
//! * **Idempotent per intent.** Every POST carries an `Idempotency-Key` derived from the caller's intent
//!   ([`Intent`]: the `Idempotency-Key` our caller sent, scoped to the caller, or a fresh one per call when it sent
//!   none), the operation and the step ([`IdempotencyKey::for_intent`]): our own retries after a timeout, and our
//!   caller's retry of the same intent, reach Stripe with the same key, and Stripe replays the first result instead
//!   of making a second customer, subscription or charge; a new intent (setting payment method A again after B)
//!   never replays a stale answer of an earlier one. Keys are never derived from the inputs alone (issue 20).
//! * **Retried, within a budget.** Network errors, timeouts, 429 and 5xx are retried with jittered exponential
//!   backoff until the total budget (`TOLLGATE_STRIPE_BUDGET_MS`) is spent; `Stripe-Should-Retry` is obeyed.
//! * **Errors once.** A failure is a [`StripeError`]: Stripe refused the request (its 4xx, with its message), Stripe
//!   is unavailable, or its answer could not be read. The services map it to problem+json once.
//! * **Measured.** `tollgate_cp_stripe_requests_total{operation,outcome}` and
//!   `tollgate_cp_stripe_request_duration_seconds{operation}`; the secret key and request bodies never reach a log,
//!   an error or a label.
//!
//! Responses are decoded with the miniserde impls async-stripe generates for every type (what its own client
//! uses), not serde: async-stripe's `deserialize` feature, serde derives over all of its generated types, was most
//! of the control plane's compile time. miniserde's errors carry no position, so an answer we cannot read is named
//! by the type we expected and the answer's `object`; `stripe::payloads`' test reads Stripe's published example of
//! every resource with the same decoder.

pub mod payloads;
pub mod signature;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use stripe_client_core::{RequestBuilder, StripeMethod, StripeRequest};

/// How calls to Stripe are made.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// `STRIPE_SECRET_KEY`.
    pub secret_key: SecretString,
    /// `STRIPE_API_BASE`, without a trailing slash.
    pub api_base: String,
    /// One attempt's timeout.
    pub attempt_timeout: Duration,
    /// Total time one call may take, retries included.
    pub budget: Duration,
}

/// One intent of a caller: what a repeated request with the same `Idempotency-Key` repeats. Stripe idempotency
/// keys derive from it, so a retry of the intent reuses Stripe's keys and a new intent gets new ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent(String);

impl Intent {
    /// A new intent of its own (a call without an `Idempotency-Key`, or work no caller asked for).
    pub fn fresh() -> Self {
        Self(format!("fresh:{}", uuid::Uuid::new_v4()))
    }

    /// The intent named by `key`, sent by the caller whose idempotency scope is `scope` (two callers' equal keys
    /// are two intents).
    pub fn keyed(scope: &str, key: &str) -> Self {
        Self(format!("keyed:{}:{scope}\0{key}", scope.len()))
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

/// An `Idempotency-Key` for Stripe: a hash of the caller's [`Intent`], the operation and the step within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of `operation` at `step` (a name for the call within the intent, e.g. `"upgrade"`) for `intent`.
    pub fn for_intent(intent: &Intent, operation: Op, step: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in [intent.as_str(), operation.label(), step] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hex::encode(hasher.finalize());
        Self(format!("tollgate-{}-{}", operation.label(), &digest[..40]))
    }

    /// A fresh key, for a call that is its own intent: retries of this call (by the client) still share it.
    pub fn fresh(operation: Op) -> Self {
        Self::for_intent(&Intent::fresh(), operation, "")
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Every Stripe operation Tollgate makes: the `operation` label of its metrics (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    CustomerCreate,
    CustomerRetrieve,
    CustomerSearch,
    CustomerUpdate,
    PriceList,
    PriceRetrieve,
    SubscriptionCreate,
    SubscriptionRetrieve,
    SubscriptionList,
    SubscriptionUpdate,
    ScheduleCreate,
    ScheduleRetrieve,
    ScheduleUpdate,
    ScheduleRelease,
    InvoicePreview,
    InvoiceList,
    InvoiceRetrieve,
    SetupIntentCreate,
    PaymentMethodRetrieve,
    PaymentMethodAttach,
    PortalSessionCreate,
    SubscriptionCancel,
    SubscriptionResume,
    InvoicePay,
    MeterRetrieve,
    MeterEventCreate,
    MeterEventSummaries,
}

impl Op {
    /// Every operation, for registering metric series up front.
    pub const ALL: [Op; 27] = [
        Op::CustomerCreate,
        Op::CustomerRetrieve,
        Op::CustomerSearch,
        Op::CustomerUpdate,
        Op::PriceList,
        Op::PriceRetrieve,
        Op::SubscriptionCreate,
        Op::SubscriptionRetrieve,
        Op::SubscriptionList,
        Op::SubscriptionUpdate,
        Op::ScheduleCreate,
        Op::ScheduleRetrieve,
        Op::ScheduleUpdate,
        Op::ScheduleRelease,
        Op::InvoicePreview,
        Op::InvoiceList,
        Op::InvoiceRetrieve,
        Op::SetupIntentCreate,
        Op::PaymentMethodRetrieve,
        Op::PaymentMethodAttach,
        Op::PortalSessionCreate,
        Op::SubscriptionCancel,
        Op::SubscriptionResume,
        Op::InvoicePay,
        Op::MeterRetrieve,
        Op::MeterEventCreate,
        Op::MeterEventSummaries,
    ];

    /// The metric label, e.g. `customers.create`.
    pub fn label(self) -> &'static str {
        match self {
            Self::CustomerCreate => "customers.create",
            Self::CustomerRetrieve => "customers.retrieve",
            Self::CustomerSearch => "customers.search",
            Self::CustomerUpdate => "customers.update",
            Self::PriceList => "prices.list",
            Self::PriceRetrieve => "prices.retrieve",
            Self::SubscriptionCreate => "subscriptions.create",
            Self::SubscriptionRetrieve => "subscriptions.retrieve",
            Self::SubscriptionList => "subscriptions.list",
            Self::SubscriptionUpdate => "subscriptions.update",
            Self::ScheduleCreate => "subscription_schedules.create",
            Self::ScheduleRetrieve => "subscription_schedules.retrieve",
            Self::ScheduleUpdate => "subscription_schedules.update",
            Self::ScheduleRelease => "subscription_schedules.release",
            Self::InvoicePreview => "invoices.create_preview",
            Self::InvoiceList => "invoices.list",
            Self::InvoiceRetrieve => "invoices.retrieve",
            Self::SetupIntentCreate => "setup_intents.create",
            Self::PaymentMethodRetrieve => "payment_methods.retrieve",
            Self::PaymentMethodAttach => "payment_methods.attach",
            Self::PortalSessionCreate => "billing_portal.sessions.create",
            Self::SubscriptionCancel => "subscriptions.cancel",
            Self::SubscriptionResume => "subscriptions.resume",
            Self::InvoicePay => "invoices.pay",
            Self::MeterRetrieve => "billing.meters.retrieve",
            Self::MeterEventCreate => "billing.meter_events.create",
            Self::MeterEventSummaries => "billing.meters.event_summaries",
        }
    }
}

/// Why a Stripe call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with a 4xx: the request is wrong (an unknown id, a declined card, a bad parameter).
    #[error("stripe refused the request ({status} {kind}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Stripe's error `type` (`card_error`, `invalid_request_error`, …).
        kind: String,
        /// Stripe's `code`, e.g. `resource_missing`.
        code: Option<String>,
        /// Stripe's message, meant for the customer.
        message: String,
        /// The request parameter at fault, as Stripe names it.
        param: Option<String>,
    },
    /// Stripe could not be reached, timed out, or kept answering 429/5xx until the budget was spent.
    #[error("stripe is unavailable: {0}")]
    Unavailable(String),
    /// Stripe refused our credentials (401/403): an operator problem, not the caller's.
    #[error("stripe refused Tollgate's API key")]
    Unauthorized,
    /// A 2xx whose body does not decode.
    #[error("stripe's answer could not be read: {0}")]
    Unreadable(String),
    /// A POST or DELETE that Stripe answered 2xx — so it made the change — whose body does not decode. Never
    /// "nothing was changed": the change is done in Stripe, and the mirror converges through its webhook.
    #[error("stripe made the change, but its answer could not be read: {0}")]
    DoneUnreadable(String),
}

impl StripeError {
    /// Whether Stripe said the object does not exist: its error code `resource_missing`, and nothing else (any
    /// other 404 is a failure to retry, not a deletion).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Refused { code: Some(code), .. } if code == "resource_missing")
    }

    /// The metric outcome.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Refused { kind, .. } if kind == "card_error" => "card_error",
            Self::Refused { .. } => "refused",
            Self::Unavailable(_) => "unavailable",
            Self::Unauthorized => "unauthorized",
            Self::Unreadable(_) | Self::DoneUnreadable(_) => "unreadable",
        }
    }
}

/// Stripe's error envelope.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(serde::Deserialize)]
struct ErrorObject {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
}

/// The client's metrics.
#[derive(Clone)]
pub struct StripeMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl StripeMetrics {
    /// Creates and registers the metrics, with a series per operation and outcome from the start.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_stripe_requests_total",
                    "Stripe API calls by operation and outcome (retries included in one call).",
                ),
                &["operation", "outcome"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "tollgate_cp_stripe_request_duration_seconds",
                    "Time of one Stripe API call, retries included, by operation.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["operation"],
            )?,
        };
        for op in Op::ALL {
            for outcome in [
                "ok",
                "refused",
                "card_error",
                "unavailable",
                "unauthorized",
                "unreadable",
            ] {
                m.requests.with_label_values(&[op.label(), outcome]);
            }
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }
}

/// The Stripe API client; cheap to share.
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    headers: HeaderMap,
    budget: Duration,
    metrics: StripeMetrics,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl StripeClient {
    /// A client for `settings`.
    pub fn new(settings: &StripeSettings, metrics: StripeMetrics) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.attempt_timeout)
            .connect_timeout(settings.attempt_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let mut auth =
            HeaderValue::try_from(format!("Bearer {}", settings.secret_key.expose_secret()))
                .map_err(|_| "STRIPE_SECRET_KEY: not a valid header value".to_owned())?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(
            "stripe-version",
            HeaderValue::from_str(stripe_shared::version::VERSION.as_str())
                .map_err(|_| "the Stripe API version is not a header value".to_owned())?,
        );
        Ok(Self {
            http,
            base: settings.api_base.trim_end_matches('/').to_owned(),
            headers,
            budget: settings.budget,
            metrics,
        })
    }

    /// A read whose object may be gone: `None` when Stripe answers `resource_missing` (see
    /// [`StripeError::is_missing`]), every other failure as [`Self::send`] gives it.
    pub async fn retrieve<R>(&self, op: Op, request: &R) -> Result<Option<R::Output>, StripeError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        match self.send(op, request, None).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends `request` (a POST needs `key`), retrying transient failures within the budget, and decodes the answer.
    pub async fn send<R>(
        &self,
        op: Op,
        request: &R,
        key: Option<&IdempotencyKey>,
    ) -> Result<R::Output, StripeError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let started = Instant::now();
        let builder = request.build();
        let changes = !matches!(builder.method, StripeMethod::Get);
        let result = self.send_once_or_retry(op, &builder, key).await;
        self.metrics
            .duration
            .with_label_values(&[op.label()])
            .observe(started.elapsed().as_secs_f64());
        let result = result.and_then(|bytes| decode_answer::<R::Output>(&bytes, changes));
        let outcome = result.as_ref().map_or_else(StripeError::outcome, |_| "ok");
        self.metrics
            .requests
            .with_label_values(&[op.label(), outcome])
            .inc();
        if let Err(e) = &result {
            match e {
                StripeError::Refused { .. } => {
                    tracing::debug!(stripe.operation = op.label(), error = %e, "stripe refused a request");
                }
                _ => {
                    tracing::warn!(stripe.operation = op.label(), error = %e, "stripe call failed")
                }
            }
        }
        result
    }

    async fn send_once_or_retry(
        &self,
        op: Op,
        builder: &RequestBuilder,
        key: Option<&IdempotencyKey>,
    ) -> Result<bytes::Bytes, StripeError> {
        let deadline = Instant::now() + self.budget;
        let mut attempt: u32 = 0;
        loop {
            let outcome = self.attempt(builder, key).await;
            let retry = match &outcome {
                Ok(_) => false,
                Err(Attempt::Transient(_)) => true,
                Err(Attempt::Final(_)) => false,
            };
            let delay = backoff(attempt);
            if !retry || Instant::now() + delay >= deadline {
                return outcome.map_err(|e| match e {
                    Attempt::Transient(detail) => StripeError::Unavailable(detail),
                    Attempt::Final(e) => e,
                });
            }
            tracing::debug!(
                stripe.operation = op.label(),
                attempt,
                "retrying a stripe call"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        builder: &RequestBuilder,
        key: Option<&IdempotencyKey>,
    ) -> Result<bytes::Bytes, Attempt> {
        let mut url = format!("{}/v1{}", self.base, builder.path);
        if let Some(query) = builder.query.as_deref().filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(query);
        }
        let method = match builder.method {
            StripeMethod::Get => reqwest::Method::GET,
            StripeMethod::Post => reqwest::Method::POST,
            StripeMethod::Delete => reqwest::Method::DELETE,
        };
        let mut request = self.http.request(method, url).headers(self.headers.clone());
        if let Some(key) = key {
            request = request.header("idempotency-key", key.as_str());
        }
        if let Some(body) = &builder.body {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone());
        }
        let response = request.send().await.map_err(|e| {
            // Without the URL: it is ours, but it says nothing a reader needs.
            Attempt::Transient(e.without_url().to_string())
        })?;
        let status = response.status().as_u16();
        let should_retry = response
            .headers()
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true");
        let body = response
            .bytes()
            .await
            .map_err(|e| Attempt::Transient(e.without_url().to_string()))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        if should_retry.unwrap_or(matches!(status, 409 | 429 | 500..=599)) {
            return Err(Attempt::Transient(format!("HTTP {status}")));
        }
        Err(Attempt::Final(final_error(status, &body)))
    }
}

/// What a final (not retried) non-2xx answer means. A 4xx is Stripe refusing the request only when it carries
/// Stripe's error envelope: a bare 404 from a proxy or a wrong `STRIPE_API_BASE` path is not Stripe saying that
/// an object does not exist, and must never be read as "gone".
fn final_error(status: u16, body: &[u8]) -> StripeError {
    match status {
        401 | 403 => StripeError::Unauthorized,
        400..=499 => match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => StripeError::Refused {
                status,
                kind: error.kind,
                code: error.code,
                message: error
                    .message
                    .unwrap_or_else(|| "the request was refused".to_owned()),
                param: error.param,
            },
            Err(_) => StripeError::Unreadable(format!(
                "HTTP {status} without Stripe's error envelope (is STRIPE_API_BASE Stripe's API?)"
            )),
        },
        _ => StripeError::Unavailable(format!("HTTP {status}")),
    }
}

/// The outcome of one attempt.
enum Attempt {
    /// Worth another try (network, 429, 5xx).
    Transient(String),
    /// Not.
    Final(StripeError),
}

/// 100 ms doubling to at most 2 s, with up to half of it as jitter so replicas do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(5));
    let base = base.min(Duration::from_secs(2));
    let jitter = rand::random::<f64>() * 0.5;
    base.mul_f64(1.0 - jitter)
}

fn decode<T: miniserde::Deserialize>(bytes: &[u8]) -> Result<T, StripeError> {
    let unreadable = || {
        // miniserde says only that it failed: name what was expected and what Stripe says the answer is.
        let object = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("object").and_then(|o| o.as_str()).map(str::to_owned))
            .map_or_else(|| "no object".to_owned(), |o| format!("object {o:?}"));
        StripeError::Unreadable(format!("not a {} ({object})", std::any::type_name::<T>()))
    };
    let text = std::str::from_utf8(bytes).map_err(|_| unreadable())?;
    miniserde::json::from_str(text).map_err(|_| unreadable())
}

/// Decodes a 2xx answer. When the request `changes` something (POST, DELETE), a body that does not decode is
/// [`StripeError::DoneUnreadable`]: Stripe made the change, so it must never be reported as "nothing was changed".
fn decode_answer<T: miniserde::Deserialize>(bytes: &[u8], changes: bool) -> Result<T, StripeError> {
    decode(bytes).map_err(|e| match e {
        StripeError::Unreadable(detail) if changes => StripeError::DoneUnreadable(detail),
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_follow_the_intent_not_the_inputs() {
        let intent = Intent::keyed("operator", "k1");
        let a = IdempotencyKey::for_intent(&intent, Op::CustomerCreate, "");
        assert_eq!(
            a,
            IdempotencyKey::for_intent(&intent, Op::CustomerCreate, "")
        );
        assert_ne!(
            a,
            IdempotencyKey::for_intent(&Intent::keyed("operator", "k2"), Op::CustomerCreate, "")
        );
        assert_ne!(
            a,
            IdempotencyKey::for_intent(&Intent::keyed("key:1", "k1"), Op::CustomerCreate, ""),
            "two callers' equal keys are two intents"
        );
        assert_ne!(
            a,
            IdempotencyKey::for_intent(&intent, Op::SubscriptionCreate, "")
        );
        assert_ne!(
            IdempotencyKey::for_intent(&intent, Op::ScheduleUpdate, "a"),
            IdempotencyKey::for_intent(&intent, Op::ScheduleUpdate, "b")
        );
        assert_ne!(
            Intent::keyed("ab", "c"),
            Intent::keyed("a", "bc"),
            "scope and key are separated"
        );
        assert_ne!(
            IdempotencyKey::fresh(Op::CustomerCreate),
            IdempotencyKey::fresh(Op::CustomerCreate)
        );
        assert!(a.as_str().len() <= 255);
        assert!(a.as_str().starts_with("tollgate-customers.create-"));
    }

    #[test]
    fn only_resource_missing_means_gone() {
        let missing = final_error(
            404,
            br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such subscription: 'sub_1'","param":"id"}}"#,
        );
        assert!(missing.is_missing(), "{missing}");
        for (status, body) in [
            (404, &b"<html><body>Not Found</body></html>"[..]),
            (404, b""),
            (404, br#"{"message":"not found"}"#),
            (
                404,
                br#"{"error":{"type":"invalid_request_error","message":"Unrecognized request URL (GET: /wrong/v1/subscriptions/sub_1)."}}"#,
            ),
            (
                400,
                br#"{"error":{"type":"invalid_request_error","code":"parameter_unknown","message":"Received unknown parameter: x"}}"#,
            ),
        ] {
            let e = final_error(status, body);
            assert!(!e.is_missing(), "{status} {e}");
        }
        assert!(matches!(
            final_error(404, b"<html>Not Found</html>"),
            StripeError::Unreadable(_)
        ));
        assert!(matches!(final_error(403, b""), StripeError::Unauthorized));
        assert!(matches!(final_error(502, b""), StripeError::Unavailable(_)));
    }

    #[test]
    fn an_undecodable_answer_to_a_change_is_done_not_nothing() {
        #[derive(Debug, miniserde::Deserialize)]
        struct Needs {
            id: String,
        }
        let body = br#"{"object":"subscription","status":"a_status_from_a_newer_api"}"#;
        let read = decode_answer::<Needs>(body, false).unwrap_err();
        assert!(matches!(read, StripeError::Unreadable(_)), "{read}");
        let change = decode_answer::<Needs>(body, true).unwrap_err();
        assert!(matches!(change, StripeError::DoneUnreadable(_)), "{change}");
        assert!(change.to_string().contains("made the change"), "{change}");
        assert!(!change.is_missing());
        assert_eq!(change.outcome(), "unreadable");
        let read = decode_answer::<Needs>(br#"{"id":"sub_1"}"#, true).expect("decodes");
        assert_eq!(read.id, "sub_1");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(100));
        assert!(backoff(0) >= Duration::from_millis(50));
        assert!(backoff(10) <= Duration::from_secs(2));
        assert!(backoff(10) >= Duration::from_secs(1));
    }
}
