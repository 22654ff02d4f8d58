//! The Stigg GraphQL client: the four operations Stigg's own SDKs send for mirroring (their documents verbatim, in
//! `operations/`, from `stigg-api-client-v2` 6.25.0; see `docs/stigg-operations.md`), and nothing else — no
//! `provisionCustomer`, `provisionSubscription` or any mutation with which Stigg could create a Stripe subscription
//! of its own.
//!
//! One POST per operation to `STIGG_API_URL` with `X-API-KEY`, as the Python SDK sends it. A GraphQL `errors`
//! array (with HTTP 200) is a failure; 429 and 5xx are retried with backoff within a short budget (the outbox
//! retries beyond it, durably).

use crate::config::StiggSettings;
use prometheus::{IntCounterVec, Opts, Registry};
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// One of the mirror's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StiggOp {
    /// `importOneCustomer`: the customer, with the Stripe customer id as `billingId`.
    ImportCustomer,
    /// `importSubscriptionsBulk`: the subscription and every plan change (`planId`, Stripe id as `billingId`).
    ImportSubscription,
    /// `updateOneSubscription`: trial end, billing period, cancellation date (and the pending plan, as metadata).
    UpdateSubscription,
    /// `cancelSubscription`.
    CancelSubscription,
}

impl StiggOp {
    /// Every operation.
    pub const ALL: [Self; 4] = [
        Self::ImportCustomer,
        Self::ImportSubscription,
        Self::UpdateSubscription,
        Self::CancelSubscription,
    ];

    /// The outbox's name for it (and the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImportCustomer => "import_customer",
            Self::ImportSubscription => "import_subscription",
            Self::UpdateSubscription => "update_subscription",
            Self::CancelSubscription => "cancel_subscription",
        }
    }

    /// Parses the outbox's name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// The SDK's `operationName`.
    pub fn operation_name(self) -> &'static str {
        match self {
            Self::ImportCustomer => "ImportCustomer",
            Self::ImportSubscription => "ImportSubscriptionsBulk",
            Self::UpdateSubscription => "UpdateSubscription",
            Self::CancelSubscription => "CancelSubscription",
        }
    }

    /// The SDK's document.
    pub fn document(self) -> &'static str {
        match self {
            Self::ImportCustomer => include_str!("operations/import_customer.graphql"),
            Self::ImportSubscription => {
                include_str!("operations/import_subscriptions_bulk.graphql")
            }
            Self::UpdateSubscription => include_str!("operations/update_subscription.graphql"),
            Self::CancelSubscription => include_str!("operations/cancel_subscription.graphql"),
        }
    }

    /// Stigg error codes that mean the operation's effect is already there, so a repeated delivery is done:
    /// importing a customer that exists, cancelling a subscription that is cancelled.
    fn already_done(self, code: &str) -> bool {
        match self {
            Self::ImportCustomer => code == "DuplicatedEntityNotAllowed",
            Self::CancelSubscription => code == "SubscriptionAlreadyCanceledOrExpired",
            Self::ImportSubscription | Self::UpdateSubscription => false,
        }
    }
}

/// Why a Stigg call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StiggError {
    /// Unreachable, timed out, or 429/5xx until the budget was spent.
    #[error("stigg is unavailable: {0}")]
    Unavailable(String),
    /// Stigg answered with GraphQL errors (or a 4xx).
    #[error("stigg refused {operation}: {message}")]
    Refused {
        /// The operation.
        operation: &'static str,
        /// `errors[0].extensions.code`.
        code: Option<String>,
        /// `errors[0].message`.
        message: String,
    },
}

impl StiggError {
    fn outcome(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Refused { .. } => "refused",
        }
    }
}

/// The client's metrics.
#[derive(Clone)]
pub struct StiggMetrics {
    /// `tollgate_cp_stigg_deliveries_total{operation,outcome}` (`ok`, `already_done`, `refused`, `unavailable`,
    /// `skipped`).
    pub deliveries: IntCounterVec,
}

impl StiggMetrics {
    /// Creates and registers the metrics, every series from the start.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            deliveries: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_stigg_deliveries_total",
                    "Stigg mirror operations by operation and outcome (skipped: Stigg not configured).",
                ),
                &["operation", "outcome"],
            )?,
        };
        for op in StiggOp::ALL {
            for outcome in ["ok", "already_done", "refused", "unavailable", "skipped"] {
                m.deliveries.with_label_values(&[op.as_str(), outcome]);
            }
        }
        registry.register(Box::new(m.deliveries.clone()))?;
        Ok(m)
    }
}

/// The Stigg client.
pub struct StiggClient {
    http: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    budget: Duration,
    metrics: StiggMetrics,
}

impl StiggClient {
    /// A client for `settings`.
    pub fn new(settings: &StiggSettings, metrics: StiggMetrics) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let mut key = HeaderValue::from_str(settings.api_key.expose_secret())
            .map_err(|_| "STIGG_API_KEY: not a valid header value".to_owned())?;
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", key);
        headers.insert("x-api-version", HeaderValue::from_static("1"));
        Ok(Self {
            http,
            url: settings.api_url.clone(),
            headers,
            budget: settings.budget,
            metrics,
        })
    }

    /// Sends `op` with `input`. `Ok` also when Stigg says the effect is already there (a repeated delivery).
    pub async fn execute(&self, op: StiggOp, input: &Value) -> Result<Value, StiggError> {
        let result = self.execute_with_retries(op, input).await;
        let outcome = match &result {
            Ok(Delivered::Ok(_)) => "ok",
            Ok(Delivered::AlreadyDone) => "already_done",
            Err(e) => e.outcome(),
        };
        self.metrics
            .deliveries
            .with_label_values(&[op.as_str(), outcome])
            .inc();
        result.map(|d| match d {
            Delivered::Ok(v) => v,
            Delivered::AlreadyDone => Value::Null,
        })
    }

    async fn execute_with_retries(
        &self,
        op: StiggOp,
        input: &Value,
    ) -> Result<Delivered, StiggError> {
        let deadline = Instant::now() + self.budget;
        let mut attempt = 0u32;
        loop {
            // Each attempt gets what is left of the budget, so a Stigg that accepts and never answers costs one
            // budget, not one timeout per attempt.
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt_result = tokio::time::timeout(left, self.attempt(op, input))
                .await
                .unwrap_or_else(|_| Err(StiggError::Unavailable("timed out".to_owned())));
            match attempt_result {
                Err(StiggError::Unavailable(detail)) => {
                    let delay = Duration::from_millis(100 * (1 << attempt.min(4)));
                    if Instant::now() + delay >= deadline {
                        return Err(StiggError::Unavailable(detail));
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn attempt(&self, op: StiggOp, input: &Value) -> Result<Delivered, StiggError> {
        let body = json!({
            "query": op.document(),
            "operationName": op.operation_name(),
            "variables": {"input": input},
        });
        let response = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header("x-graphql-operation-name", op.operation_name())
            .json(&body)
            .send()
            .await
            .map_err(|e| StiggError::Unavailable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        if status == 429 || status >= 500 {
            return Err(StiggError::Unavailable(format!("HTTP {status}")));
        }
        let answer: Value = response.json().await.map_err(|e| {
            StiggError::Unavailable(format!("unreadable answer: {}", e.without_url()))
        })?;
        if let Some(first) = answer["errors"]
            .as_array()
            .and_then(|errors| errors.first())
        {
            let code = first["extensions"]["code"].as_str().map(str::to_owned);
            if code.as_deref() == Some("RateLimitExceeded") {
                return Err(StiggError::Unavailable("rate limited".to_owned()));
            }
            if code.as_deref().is_some_and(|c| op.already_done(c)) {
                return Ok(Delivered::AlreadyDone);
            }
            return Err(StiggError::Refused {
                operation: op.operation_name(),
                code,
                message: first["message"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_owned(),
            });
        }
        if !(200..300).contains(&status) {
            return Err(StiggError::Refused {
                operation: op.operation_name(),
                code: None,
                message: format!("HTTP {status}"),
            });
        }
        Ok(Delivered::Ok(answer["data"].clone()))
    }
}

enum Delivered {
    Ok(Value),
    AlreadyDone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_are_the_sdks_and_none_provisions() {
        for op in StiggOp::ALL {
            let doc = op.document();
            assert!(
                doc.starts_with(&format!("mutation {}(", op.operation_name())),
                "{doc}"
            );
            for forbidden in [
                "provisionCustomer",
                "provisionSubscription",
                "applySubscription",
                "createSubscription",
            ] {
                assert!(
                    !doc.contains(forbidden),
                    "{} contains {forbidden}",
                    op.operation_name()
                );
            }
            assert_eq!(StiggOp::parse(op.as_str()), Some(op));
        }
        assert!(
            StiggOp::ImportCustomer
                .document()
                .contains("importCustomer: importOneCustomer(input: $input)")
        );
        assert!(
            StiggOp::UpdateSubscription
                .document()
                .contains("updateSubscription: updateOneSubscription(input: $input)")
        );
    }
}
