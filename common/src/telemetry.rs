//! Logging and error reporting set-up, shared by both binaries.
//!
//! Logs are `tracing` events, one JSON object per line by default. Conventions (docs/LOGGING.md): dotted field
//! names (`org.id`, `http.status`, `duration_ms`), a readable message, and never a token, key, email or card detail.

use crate::config::LogFormat;
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps Sentry's transport alive; drop it last so queued events are flushed on exit.
pub struct TelemetryGuard {
    _sentry: Option<sentry::ClientInitGuard>,
}

/// Installs the global subscriber (filter from `RUST_LOG`, default `info`) and, with a DSN, Sentry.
pub fn init(
    service: &'static str,
    format: LogFormat,
    sentry_dsn: Option<&SecretString>,
) -> TelemetryGuard {
    let sentry = sentry_dsn.map(|dsn| {
        sentry::init((
            dsn.expose_secret(),
            sentry::ClientOptions {
                release: Some(format!("{service}@{}", env!("CARGO_PKG_VERSION")).into()),
                send_default_pii: false,
                ..Default::default()
            },
        ))
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    let result = if sentry.is_some() {
        registry
            .with(sentry::integrations::tracing::layer())
            .try_init()
    } else {
        registry.try_init()
    };
    if result.is_err() {
        // Already installed (tests build several apps in one process): keep the first.
        tracing::debug!("tracing subscriber already installed");
    }
    TelemetryGuard { _sentry: sentry }
}
