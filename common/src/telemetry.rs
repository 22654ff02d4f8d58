//! Logging and error reporting set-up, shared by both binaries.
//!
//! Logs are `tracing` events, one JSON object per line by default. Conventions (docs/LOGGING.md): dotted field
//! names (`org.id`, `http.status`, `duration_ms`), a readable message, and never a token, key, email or card detail.

use crate::config::LogFormat;
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::layer::SubscriberExt;
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
        tracing::subscriber::set_global_default(
            registry.with(sentry::integrations::tracing::layer()),
        )
    } else {
        tracing::subscriber::set_global_default(registry)
    };
    if result.is_err() {
        // Already installed (tests build several apps in one process): keep the first.
        tracing::debug!("tracing subscriber already installed");
        return TelemetryGuard { _sentry: sentry };
    }
    // Libraries that log through `log` (Pingora) reach the same subscriber, through the bridge below.
    if log::set_boxed_logger(Box::new(LogBridge)).is_ok() {
        log::set_max_level(
            match tracing::level_filters::LevelFilter::current().into_level() {
                Some(tracing::Level::TRACE) => log::LevelFilter::Trace,
                Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
                Some(tracing::Level::INFO) => log::LevelFilter::Info,
                Some(tracing::Level::WARN) => log::LevelFilter::Warn,
                Some(tracing::Level::ERROR) => log::LevelFilter::Error,
                None => log::LevelFilter::Off,
            },
        );
    }
    TelemetryGuard { _sentry: sentry }
}

/// Forwards `log` records to `tracing`, at their level except one case: Pingora logs failures that clients cause
/// (a reset or a malformed request while it reads the request header) at `error`, which would page through Sentry.
/// Those are our clients' doing, not our fault: they arrive at `warn`.
struct LogBridge;

impl LogBridge {
    fn level(record: &log::Record<'_>) -> log::Level {
        if record.level() == log::Level::Error
            && record.target().starts_with("pingora")
            && client_caused(&record.args().to_string())
        {
            log::Level::Warn
        } else {
            record.level()
        }
    }
}

/// Whether a Pingora error message is about the downstream side (the client).
fn client_caused(message: &str) -> bool {
    message.contains("Downstream") || message.contains("downstream")
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        tracing_log::LogTracer::new().enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = Self::level(record);
        if level == record.level() {
            tracing_log::format_trace(record).ok();
            return;
        }
        let args = *record.args();
        let downgraded = log::Record::builder()
            .args(args)
            .level(level)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        tracing_log::format_trace(&downgraded).ok();
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn pingoras_client_errors_are_recognised() {
        assert!(super::client_caused(
            "Fail to proxy: Downstream ReadError context: while reading request headers, downstream session type: HTTP/1.1"
        ));
        assert!(!super::client_caused(
            "Fail to proxy: Upstream ConnectRefused context: ..."
        ));
    }
}
