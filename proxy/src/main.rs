//! `tollgate-proxy`: the metering reverse proxy.
//!
//! # Layout
//!
//! * [`config`] — settings, read once and validated at start.
//! * [`service`] — the `ProxyHttp` implementation: identify, price, check-and-consume, proxy or refuse.
//! * [`auth`] — credentials and the API key cache.
//! * [`orgs`] — cached billing state per org, refreshed in the background.
//! * [`meter`] — counter slots and the dirty set that write-back drains.
//! * [`background`] — write-back, billing refresh, revocation listening.
//! * [`admin`] — `/metrics`, `/healthz`, `/readyz` on the metrics listener.
//! * [`respond`] — problem+json and 429 responses.
//! * [`metrics`] — the Prometheus metrics.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod auth;
mod background;
mod config;
mod core;
mod meter;
mod metrics;
mod orgs;
mod respond;
mod service;

use crate::config::Config;
use crate::core::{Core, RedisHealth};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use tollgate_common::clock::SystemClock;
use tollgate_common::config::ProcessEnv;
use tollgate_common::jwt::ClerkVerifier;
use tollgate_common::keys::cache::KeyCache;
use tollgate_common::store::pg;
use tollgate_common::telemetry;

fn main() -> ExitCode {
    let config = match Config::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tollgate-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = telemetry::init(
        "tollgate-proxy",
        config.common.log_format,
        config.common.sentry_dsn.as_ref(),
    );
    match start(config) {
        Ok(never) => match never {},
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "proxy failed to start");
            eprintln!("tollgate-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: Config) -> anyhow::Result<std::convert::Infallible> {
    use anyhow::Context;
    // The pool's maintenance tasks need a runtime that lives as long as the process; Pingora's own runtimes
    // only exist inside `run_forever`.
    let support = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tollgate-support")
        .enable_all()
        .build()
        .context("starting the support runtime")?;
    let pg = {
        let _entered = support.enter();
        pg::pool(
            &config.common.database_url,
            config.common.database_max_connections,
        )
        .context("DATABASE_URL")?
    };
    let metrics_listener = std::net::TcpListener::bind(config.metrics_listen)
        .with_context(|| format!("binding TOLLGATE_METRICS_LISTEN {}", config.metrics_listen))?;
    let upstream_addr = config
        .upstream
        .addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| format!("TOLLGATE_UPSTREAM: cannot resolve {}", config.upstream.addr))?;
    let upstream = service::Upstream {
        addr: upstream_addr,
        tls: config.upstream.tls,
        sni: config.upstream.sni.clone(),
        timeouts: config.upstream.timeouts,
    };

    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::register(&registry, &config.common.plans)
        .context("registering metrics")?;
    // Plans and routes live as long as the process; 'static references keep them out of per-request clones.
    let catalog = &**Box::leak(Box::new(Arc::clone(&config.common.plans)));
    let routes = &**Box::leak(Box::new(Arc::clone(&config.routes)));
    let core = Arc::new(Core {
        replica: format!("{:016x}", rand::random::<u64>()),
        catalog,
        routes,
        clerk: ClerkVerifier::new(config.common.clerk.clone())
            .context("building the JWKS client")?,
        keys: KeyCache::new(config.common.caches.key_capacity, metrics.keys.clone()),
        sessions: Default::default(),
        orgs: orgs::OrgCache::new(config.common.caches.org_capacity, metrics.orgs.clone()),
        meter: meter::Meter::new(&config.common.redis.namespace),
        metrics,
        registry,
        redis_health: RedisHealth::default(),
        clock: Arc::new(SystemClock),
        pg,
        config,
    });

    let conf = ServerConf {
        threads: core.config.threads,
        grace_period_seconds: Some(core.config.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(2),
        // The upstream and downstream timeouts are long and nearly always cancelled (the answer comes first):
        // Pingora's fast timers would keep each one in a per-thread tree until its deadline, where Tokio's timer
        // drops a cancelled one at once (Pingora's own advice for long, usually cancelled timeouts). Durations over
        // a second use Tokio's.
        fast_timeout_to_tokio_threshold_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Option::<Opt>::None, conf);
    server.bootstrap();

    let mut proxy = http_proxy_service(
        &server.configuration,
        service::MeteringProxy::new(Arc::clone(&core), upstream),
    );
    proxy.add_tcp(&core.config.listen.to_string());
    server.add_service(proxy);
    server.add_service(background_service(
        "write-back",
        background::WriteBack {
            core: Arc::clone(&core),
        },
    ));
    server.add_service(background_service(
        "refresher",
        background::Refresher {
            core: Arc::clone(&core),
        },
    ));
    server.add_service(background_service(
        "revocations",
        background::Revocations {
            core: Arc::clone(&core),
        },
    ));
    server.add_service(background_service(
        "admin",
        admin::Admin {
            core: Arc::clone(&core),
            listener: Mutex::new(Some(metrics_listener)),
        },
    ));
    tracing::info!(listen = %core.config.listen, upstream = %core.config.upstream.addr, "proxy starting");
    // Keep the support runtime alive for the life of the process.
    std::mem::forget(support);
    server.run_forever()
}
