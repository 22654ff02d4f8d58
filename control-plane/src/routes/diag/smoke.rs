//! 9.1 `GET /api/diag/smoke`.

use crate::app::AppState;
use crate::error::ApiError;
use crate::routes::ProblemDoc;
use crate::services::diag::{self, Report};
use axum::Json;
use axum::extract::State;

/// Checks PostgreSQL, Redis and the settings, each with its latency, and logs one structured line.
#[utoipa::path(
    get, path = "/api/diag/smoke", tag = "diagnostics",
    responses(
        (status = 200, description = "Every check passed", body = Report),
        (status = 503, description = "A check failed; `failing` names it", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(())
)]
pub async fn smoke(State(app): State<AppState>) -> Result<Json<Report>, ApiError> {
    let report = diag::run(&app, true).await;
    let failing = report.failing();
    let latency = |name| report.checks.get(name).map_or(0.0, |c| c.latency_ms);
    tracing::info!(
        diag.ok = report.ok,
        diag.failing = %failing.join(","),
        diag.postgres_ms = latency("postgres"),
        diag.redis_ms = latency("redis"),
        "smoke diagnostics"
    );
    if report.ok {
        return Ok(Json(report));
    }
    let detail = failing
        .iter()
        .map(|name| {
            let error = report
                .checks
                .get(name)
                .and_then(|c| c.error.as_deref())
                .unwrap_or("failed");
            format!("{name}: {error}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(ApiError::DependenciesFailing {
        detail,
        failing,
        checks: serde_json::to_value(&report.checks).unwrap_or_default(),
    })
}
