//! 4.3 `POST /api/quota/deny-envelope.example`.

use crate::app::AppState;
use crate::error::ApiError;
use crate::routes::QuotaExceededDoc;
use axum::extract::State;

/// An example of the standard denial envelope, exactly as the proxy sends it.
#[utoipa::path(
    post, path = "/api/quota/deny-envelope.example", tag = "usage",
    responses(
        (status = 429, description = "The standard denial envelope, with Retry-After", body = QuotaExceededDoc, content_type = "application/problem+json"),
    ),
    security(())
)]
pub async fn deny_envelope_example(State(app): State<AppState>) -> ApiError {
    match app.usage.example_envelope() {
        Ok(envelope) => ApiError::QuotaExceeded(envelope),
        Err(e) => e.into(),
    }
}
