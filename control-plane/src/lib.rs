//! Tollgate's control plane: the `/api` surface for frontends, servers and operators.
//!
//! # Layout
//!
//! * [`config`] — settings, read once and validated at start.
//! * [`app`] — the shared state: pools, verifier, metrics, clock; migrations run here at start.
//! * [`http`] — the router and its middleware.
//! * [`auth`] — principals and per-route policies ([`auth::Caller`]).
//! * [`limits`] — per-org rate limits of the endpoints that call Stripe or change keys.
//! * [`routes`] — one module per endpoint (`routes/<domain>/<action>.rs`), annotated for OpenAPI.
//! * [`services`] — the work behind the handlers (SQL, Redis, Stripe), each with its own dependencies and errors.
//! * [`stripe`] — the Stripe client and webhook signatures.
//! * [`stigg`] — the Stigg GraphQL client (the SDKs' four mirroring operations).
//! * [`jobs`] — background work: the Stripe webhook worker, the Stigg outbox drain and the retention purge.
//! * [`error`] — [`error::ApiError`], the one error type, mapped once to problem+json.
//! * [`extract`] — body and query extractors whose errors name the field.
//! * [`idempotency`] — `Idempotency-Key` on every POST: the stored answer of an intent, and the [`stripe::Intent`]
//!   Stripe's keys derive from.
//! * [`validate`] — field rules several routes share.

pub mod app;
pub mod auth;
pub mod config;
pub mod cors;
pub mod error;
pub mod extract;
pub mod http;
pub mod idempotency;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod queue;
pub mod routes;
pub mod services;
pub mod stigg;
pub mod stripe;
pub mod validate;

pub use app::{App, AppState};
pub use config::Config;

use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Runs the control plane on `listener` — the API and the background workers — until `shutdown` resolves; then
/// stops accepting, finishes in-flight requests and the events being processed, and returns.
pub async fn run(
    app: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = app.billing.clone().map(|billing| {
        let workers = app.config.stripe.as_ref().map_or(1, |s| s.workers);
        tokio::spawn(queue::run(billing, workers, stopped.clone()))
    });
    let outbox = tokio::spawn(queue::run(
        app.stigg.clone(),
        jobs::STIGG_TASKS,
        stopped.clone(),
    ));
    let reports = app
        .meter_reports
        .clone()
        .map(|reporter| tokio::spawn(queue::run(reporter, jobs::METER_TASKS, stopped.clone())));
    let deliveries = tokio::spawn(queue::run(
        app.outbound.clone(),
        jobs::WEBHOOK_TASKS,
        stopped.clone(),
    ));
    let caches = tokio::spawn(jobs::caches::run(app.clone(), stopped.clone()));
    let purge = tokio::spawn(jobs::purge::run(app.purger.clone(), stopped.clone()));
    let mut server_stop = stopped.clone();
    let server = tokio::spawn(serve(app, listener, async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    }));
    shutdown.await;
    let _ = stop.send(true);
    let served = server.await.map_err(std::io::Error::other)?;
    if let Some(workers) = workers {
        let _ = workers.await;
    }
    let _ = outbox.await;
    let _ = deliveries.await;
    if let Some(reports) = reports {
        let _ = reports.await;
    }
    let _ = caches.await;
    let _ = purge.await;
    served
}

/// How long in-flight requests may finish after `shutdown` resolves.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests (for at most 30 s).
///
/// HTTP/1.1 with hyper directly rather than `axum::serve`, for one setting axum does not expose: a client must send
/// a request's whole header within `TOLLGATE_CP_HEADER_TIMEOUT_MS` (the same bound closes idle keep-alive
/// connections), so a client trickling its header a byte at a time cannot hold a connection open. Body reads are
/// bounded separately, by the extractors (`extract::read_body`).
pub async fn serve(
    app: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_timeout);
    let router = http::router(app);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Per-connection failures (a reset before accept) and descriptor exhaustion: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small request/response exchanges: do not let Nagle hold a reply back.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|req: Request<Incoming>| req.map(axum::body::Body::new)),
        );
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and malformed requests: the client's doing.
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after the drain timeout; stopping anyway");
    }
    Ok(())
}
