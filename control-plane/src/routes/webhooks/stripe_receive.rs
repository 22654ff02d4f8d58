//! 2.3 `POST /api/webhooks/stripe.receive`.

use crate::app::AppState;
use crate::error::ApiResult;
use crate::extract::{BodyRules, read_body};
use crate::routes::ProblemDoc;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

/// Stored; processed by the worker.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedResponse {
    pub queued: bool,
    #[schema(example = "evt_1Q2x")]
    pub event_id: String,
}

/// Verifies `Stripe-Signature` on the raw body and stores the event once by its id (a repeat gets the same
/// answer and stores nothing). Answers before processing: the worker applies the event within seconds.
#[utoipa::path(
    post, path = "/api/webhooks/stripe.receive", tag = "billing",
    request_body(content = String, description = "The raw Stripe event, exactly as Stripe signed it", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<HMAC-SHA256 hex>[,v1=…]")),
    responses(
        (status = 202, description = "Stored (now or before)", body = ReceivedResponse),
        (status = 400, description = "Missing or bad signature, or not a Stripe event: nothing stored", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive in time", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than TOLLGATE_WEBHOOK_BODY_LIMIT", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "Stripe or its webhook secret is not configured, or the database is down", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(())
)]
pub async fn receive_stripe_event(
    State(app): State<AppState>,
    req: Request,
) -> ApiResult<(StatusCode, Json<ReceivedResponse>)> {
    let billing = app.billing()?;
    let signature = req
        .headers()
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let rules = BodyRules {
        limit: billing.settings().webhook_body_limit,
        timeout: app.config.body_timeout,
    };
    let body = read_body(req, rules).await?;
    let received = billing.receive_event(signature.as_deref(), &body).await?;
    tracing::info!(
        stripe.event_id = %received.event_id,
        duplicate = received.duplicate,
        "stripe event received"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(ReceivedResponse {
            queued: true,
            event_id: received.event_id,
        }),
    ))
}
