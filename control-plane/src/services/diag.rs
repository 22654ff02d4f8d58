//! Dependency checks for `/api/diag/smoke` and `/readyz`.

use crate::app::App;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of one check. `error` is a fixed phrase, never a raw driver message (those can carry hosts or
/// user names).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

/// Every check, by name.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    pub ok: bool,
    pub checks: BTreeMap<&'static str, Check>,
}

impl Report {
    /// Names of the failing checks.
    pub fn failing(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|(_, c)| !c.ok)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Runs the PostgreSQL and Redis checks concurrently, plus the settings check.
pub async fn run(app: &App, include_settings: bool) -> Report {
    let (postgres, redis) = tokio::join!(postgres(app), redis(app));
    let mut checks = BTreeMap::from([("postgres", postgres), ("redis", redis)]);
    if include_settings {
        checks.insert("settings", settings(app));
    }
    Report {
        ok: checks.values().all(|c| c.ok),
        checks,
    }
}

async fn timed<F, T, E>(f: F, describe: impl Fn(&E) -> &'static str) -> Check
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, f).await;
    let latency_ms = (start.elapsed().as_secs_f64() * 1e5).round() / 100.0;
    let error = match outcome {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(describe(&e).to_owned()),
        Err(_) => Some("timed out".to_owned()),
    };
    Check {
        ok: error.is_none(),
        latency_ms,
        error,
        details: BTreeMap::new(),
    }
}

async fn postgres(app: &App) -> Check {
    let check = timed(
        sqlx::query("SELECT 1").execute(&app.pg),
        |e: &sqlx::Error| match e {
            sqlx::Error::PoolTimedOut => "timed out waiting for a connection",
            sqlx::Error::Io(_) => "unreachable",
            sqlx::Error::Tls(_) => "TLS failure",
            sqlx::Error::Database(_) => "query failed",
            _ => "error",
        },
    )
    .await;
    if !check.ok {
        app.metrics
            .dependency_errors
            .with_label_values(&["postgres"])
            .inc();
    }
    check
}

async fn redis(app: &App) -> Check {
    let mut conn = app.redis.clone();
    let check = timed(async move { conn.ping().await }, |e: &redis::RedisError| {
        if e.is_timeout() {
            "timed out"
        } else if e.is_connection_refusal() {
            "connection refused"
        } else if e.is_connection_dropped() || e.is_io_error() {
            "unreachable"
        } else {
            "command failed"
        }
    })
    .await;
    if !check.ok {
        app.metrics
            .dependency_errors
            .with_label_values(&["redis"])
            .inc();
    }
    check
}

/// What is configured, as booleans and counts; never a value.
fn settings(app: &App) -> Check {
    let c = &app.config;
    let details = BTreeMap::from([
        (
            "plans".to_owned(),
            serde_json::json!(c.common.plans.plans().count()),
        ),
        (
            "unsubscribedPlan".to_owned(),
            serde_json::json!(c.common.plans.unsubscribed().is_some()),
        ),
        (
            "clerkIssuerChecked".to_owned(),
            serde_json::json!(c.common.clerk.issuer.is_some()),
        ),
        (
            "stripeConfigured".to_owned(),
            serde_json::json!(c.stripe.is_some()),
        ),
        (
            "stiggConfigured".to_owned(),
            serde_json::json!(c.stigg.is_some()),
        ),
        (
            "sentryConfigured".to_owned(),
            serde_json::json!(c.common.sentry_dsn.is_some()),
        ),
    ]);
    Check {
        ok: true,
        latency_ms: 0.0,
        error: None,
        details,
    }
}
