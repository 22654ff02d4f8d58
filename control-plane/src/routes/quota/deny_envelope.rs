//! 4.3 `POST /api/quota/deny-envelope.example`.

use crate::app::AppState;
use crate::error::ApiResult;
use crate::routes::ProblemDoc;
use crate::services::usage;
use axum::extract::State;
use axum::response::Response;

/// An example of the standard denial envelope, exactly as the proxy sends it.
#[utoipa::path(
    post, path = "/api/quota/deny-envelope.example", tag = "usage",
    responses(
        (status = 429, description = "The standard denial envelope, with Retry-After", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(())
)]
pub async fn deny_envelope_example(State(app): State<AppState>) -> ApiResult<Response> {
    Ok(super::quota_exceeded(&usage::example_envelope(&app)?))
}
