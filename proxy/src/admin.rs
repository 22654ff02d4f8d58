//! The metrics listener: `/metrics`, `/healthz` and `/readyz`.

use crate::core::Core;
use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{Encoder, TextEncoder};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_common::store::redis::RedisConn;

/// Serves the admin endpoints on a listener bound at start (so a taken port fails the start, not later).
pub struct Admin {
    pub core: Arc<Core>,
    pub listener: Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "metrics listener unusable");
                return;
            }
        };
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(AdminState {
                core: Arc::clone(&self.core),
                redis: tokio::sync::OnceCell::new(),
            }));
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "metrics listener failed");
        }
    }
}

struct AdminState {
    core: Arc<Core>,
    redis: tokio::sync::OnceCell<RedisConn>,
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let core = &state.core;
    let mut body = Vec::new();
    if TextEncoder::new()
        .encode(&core.registry.gather(), &mut body)
        .is_err()
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Ready when PostgreSQL and Redis answer within a second.
async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let core = &state.core;
    let timeout = Duration::from_secs(1);
    let pg = tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&core.pg)).await;
    let redis = tokio::time::timeout(timeout, async {
        let conn = state
            .redis
            .get_or_try_init(|| RedisConn::connect(&core.config.common.redis))
            .await?;
        conn.clone().ping().await
    })
    .await;
    let pg_ok = matches!(pg, Ok(Ok(_)));
    let redis_ok = matches!(redis, Ok(Ok(())));
    let status = if pg_ok && redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({"ok": pg_ok && redis_ok, "checks": {"postgres": pg_ok, "redis": redis_ok}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
