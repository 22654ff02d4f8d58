//! Operational endpoints outside `/api`: liveness, readiness, metrics.

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::services::diag;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};

/// Live as long as the process serves requests.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when PostgreSQL and Redis answer.
pub async fn readyz(State(app): State<AppState>) -> ApiResult<&'static str> {
    let report = diag::run(&app, false).await;
    if report.ok {
        Ok("ready")
    } else {
        Err(ApiError::Unavailable(format!(
            "not ready: {} failing",
            report.failing().join(", ")
        )))
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(app): State<AppState>) -> ApiResult<Response> {
    let mut body = Vec::new();
    TextEncoder::new()
        .encode(&app.registry.gather(), &mut body)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::NoRoute
}

/// Known paths, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
