//! Tollgate's control plane: the `/api` surface for frontends, servers and operators.
//!
//! # Layout
//!
//! * [`config`] — settings, read once and validated at start.
//! * [`app`] — the shared state: pools, verifier, metrics, clock; migrations run here at start.
//! * [`http`] — the router and its middleware.
//! * [`auth`] — principals and per-route policies ([`auth::Caller`]).
//! * [`routes`] — one module per endpoint (`routes/<domain>/<action>.rs`), annotated for OpenAPI.
//! * [`services`] — the SQL and Redis work behind the handlers.
//! * [`error`] — [`error::ApiError`], the one error type, mapped once to problem+json.
//! * [`extract`] — body and query extractors whose errors name the field.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod http;
pub mod metrics;
pub mod routes;
pub mod services;

pub use app::{App, AppState};
pub use config::Config;

use std::future::Future;
use tokio::net::TcpListener;

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    app: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown)
        .await
}
