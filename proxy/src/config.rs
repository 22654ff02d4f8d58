//! The proxy's settings: the shared ones plus its own, read once at start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tollgate_common::config::{CommonSettings, ConfigErrors, Env, Reader};
use tollgate_common::domain::RouteTable;

pub const ENV_PROXY_LISTEN: &str = "TOLLGATE_PROXY_LISTEN";
pub const ENV_UPSTREAM: &str = "TOLLGATE_UPSTREAM";
pub const ENV_METRICS_LISTEN: &str = "TOLLGATE_METRICS_LISTEN";
pub const ENV_THREADS: &str = "TOLLGATE_PROXY_THREADS";
pub const ENV_WRITEBACK_INTERVAL_MS: &str = "TOLLGATE_WRITEBACK_INTERVAL_MS";
pub const ENV_REFRESH_INTERVAL_MS: &str = "TOLLGATE_REFRESH_INTERVAL_MS";
pub const ENV_SETTLE_INTERVAL_MS: &str = "TOLLGATE_SETTLE_INTERVAL_MS";
pub const ENV_REDIS_FAILURE_POLICY: &str = "TOLLGATE_REDIS_FAILURE_POLICY";
pub const ENV_SHUTDOWN_GRACE_SECS: &str = "TOLLGATE_SHUTDOWN_GRACE_SECS";
pub const ENV_UPSTREAM_CONNECT_TIMEOUT_MS: &str = "TOLLGATE_UPSTREAM_CONNECT_TIMEOUT_MS";
pub const ENV_UPSTREAM_TOTAL_CONNECT_TIMEOUT_MS: &str =
    "TOLLGATE_UPSTREAM_TOTAL_CONNECT_TIMEOUT_MS";
pub const ENV_UPSTREAM_READ_TIMEOUT_MS: &str = "TOLLGATE_UPSTREAM_READ_TIMEOUT_MS";
pub const ENV_UPSTREAM_WRITE_TIMEOUT_MS: &str = "TOLLGATE_UPSTREAM_WRITE_TIMEOUT_MS";
pub const ENV_DOWNSTREAM_READ_TIMEOUT_MS: &str = "TOLLGATE_DOWNSTREAM_READ_TIMEOUT_MS";

pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:8000";
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9100";
pub const DEFAULT_WRITEBACK_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_REFRESH_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_SETTLE_INTERVAL_MS: u64 = 20;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 3;
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_UPSTREAM_TOTAL_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_UPSTREAM_READ_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_UPSTREAM_WRITE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_DOWNSTREAM_READ_TIMEOUT_MS: u64 = 60_000;

/// What to do with a metered request while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Proxy it unmetered (availability first; the default).
    FailOpen,
    /// Refuse it with 503 (exactness first).
    FailClosed,
}

impl FailurePolicy {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
        }
    }
}

impl std::str::FromStr for FailurePolicy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "fail_open" => Ok(Self::FailOpen),
            "fail_closed" => Ok(Self::FailClosed),
            _ => Err(()),
        }
    }
}

/// Where to send admitted requests, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` to connect to.
    pub addr: String,
    /// TLS to the upstream.
    pub tls: bool,
    /// SNI / Host for TLS.
    pub sni: String,
    /// Timeouts of the upstream exchange.
    pub timeouts: UpstreamTimeouts,
}

/// How long the proxy waits on the upstream. Exceeding one answers 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// TCP connect plus the TLS handshake.
    pub total_connect: Duration,
    /// Each read of the response (the longest silence: before the response header, and between body chunks).
    pub read: Duration,
    /// Each write of the request.
    pub write: Duration,
}

/// Everything the proxy is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonSettings,
    pub routes: Arc<RouteTable>,
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub metrics_listen: SocketAddr,
    pub threads: usize,
    pub writeback_interval: Duration,
    pub refresh_interval: Duration,
    pub settle_interval: Duration,
    pub failure_policy: FailurePolicy,
    pub shutdown_grace: Duration,
    /// Each read from a client (Pingora times single reads; see the README on slow clients).
    pub downstream_read_timeout: Duration,
}

impl Config {
    /// Reads and validates every key; the error names each bad one.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let common = CommonSettings::read(&mut r);
        let routes = common.as_ref().and_then(|c| c.read_routes(&mut r));
        let listen = r.listen(ENV_PROXY_LISTEN, DEFAULT_PROXY_LISTEN);
        let metrics_listen = r.listen(ENV_METRICS_LISTEN, DEFAULT_METRICS_LISTEN);
        let timeouts = UpstreamTimeouts {
            connect: r.millis(
                ENV_UPSTREAM_CONNECT_TIMEOUT_MS,
                DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
                1..=600_000,
            ),
            total_connect: r.millis(
                ENV_UPSTREAM_TOTAL_CONNECT_TIMEOUT_MS,
                DEFAULT_UPSTREAM_TOTAL_CONNECT_TIMEOUT_MS,
                1..=600_000,
            ),
            read: r.millis(
                ENV_UPSTREAM_READ_TIMEOUT_MS,
                DEFAULT_UPSTREAM_READ_TIMEOUT_MS,
                1..=3_600_000,
            ),
            write: r.millis(
                ENV_UPSTREAM_WRITE_TIMEOUT_MS,
                DEFAULT_UPSTREAM_WRITE_TIMEOUT_MS,
                1..=3_600_000,
            ),
        };
        if timeouts.total_connect < timeouts.connect {
            r.error(
                ENV_UPSTREAM_TOTAL_CONNECT_TIMEOUT_MS,
                format_args!("must be at least {ENV_UPSTREAM_CONNECT_TIMEOUT_MS}"),
            );
        }
        let downstream_read_timeout = r.millis(
            ENV_DOWNSTREAM_READ_TIMEOUT_MS,
            DEFAULT_DOWNSTREAM_READ_TIMEOUT_MS,
            100..=3_600_000,
        );
        let upstream = r.url(ENV_UPSTREAM, None).and_then(|u| {
            let host = u.host_str()?.to_owned();
            let tls = u.scheme() == "https";
            let port = u.port_or_known_default()?;
            let host_for_addr = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            Some(Upstream {
                addr: format!("{host_for_addr}:{port}"),
                tls,
                sni: host,
                timeouts,
            })
        });
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = r.parse_or(ENV_THREADS, cores, "a number of threads");
        if !(1..=256).contains(&threads) {
            r.error(ENV_THREADS, "must be between 1 and 256");
        }
        let writeback_ms = r.parse_or(
            ENV_WRITEBACK_INTERVAL_MS,
            DEFAULT_WRITEBACK_INTERVAL_MS,
            "milliseconds",
        );
        if !(10..=60_000).contains(&writeback_ms) {
            r.error(ENV_WRITEBACK_INTERVAL_MS, "must be between 10 and 60000");
        }
        let refresh_ms = r.parse_or(
            ENV_REFRESH_INTERVAL_MS,
            DEFAULT_REFRESH_INTERVAL_MS,
            "milliseconds",
        );
        if !(10..=60_000).contains(&refresh_ms) {
            r.error(ENV_REFRESH_INTERVAL_MS, "must be between 10 and 60000");
        }
        let settle_ms = r.parse_or(
            ENV_SETTLE_INTERVAL_MS,
            DEFAULT_SETTLE_INTERVAL_MS,
            "milliseconds",
        );
        if !(1..=1_000).contains(&settle_ms) {
            r.error(ENV_SETTLE_INTERVAL_MS, "must be between 1 and 1000");
        }
        let failure_policy = r.parse_or(
            ENV_REDIS_FAILURE_POLICY,
            FailurePolicy::FailOpen,
            "fail_open or fail_closed",
        );
        let grace = r.parse_or(
            ENV_SHUTDOWN_GRACE_SECS,
            DEFAULT_SHUTDOWN_GRACE_SECS,
            "seconds",
        );
        r.finish()?;
        match (common, routes, upstream) {
            (Some(common), Some((_, routes)), Some(upstream)) => Ok(Self {
                common,
                routes,
                listen,
                upstream,
                metrics_listen,
                threads,
                writeback_interval: Duration::from_millis(writeback_ms),
                refresh_interval: Duration::from_millis(refresh_ms),
                settle_interval: Duration::from_millis(settle_ms),
                failure_policy,
                shutdown_grace: Duration::from_secs(grace),
                downstream_read_timeout,
            }),
            _ => Err(ConfigErrors(vec![format!(
                "{ENV_UPSTREAM}: expected http(s)://host[:port]"
            )])),
        }
    }
}
