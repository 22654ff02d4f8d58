//! `POST /api/webhooks/endpoints.set` (CONTRACT §9): the org's endpoint for usage alerts.

use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::idempotency::ShownOnce;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use crate::services::outbound::EndpointSet;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// Where to send which alerts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// An `https` (or `http`) URL on a public address.
    #[schema(example = "https://api.example.com/hooks/tollgate")]
    pub url: String,
    /// `usage.threshold.crossed`, `usage.bound.reached`.
    #[schema(example = json!(["usage.threshold.crossed", "usage.bound.reached"]))]
    pub events: Vec<String>,
}

/// Sets the org's webhook endpoint (replacing any) and returns its signing secret, once. Deliveries are signed
/// per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
#[utoipa::path(
    post, path = "/api/webhooks/endpoints.set", tag = "webhooks",
    request_body = EndpointRequest,
    responses(
        (status = 200, description = "The endpoint is set; `secret` is shown this once", body = EndpointSet),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "TOLLGATE_WEBHOOK_SECRETS_KEY is not set", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn set_endpoint(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<EndpointRequest>,
) -> ApiResult<Response> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let set = app
        .outbound
        .set_endpoint(&org, &req.url, &req.events)
        .await?;
    let mut response = Json(set).into_response();
    response.extensions_mut().insert(ShownOnce);
    Ok(response)
}
