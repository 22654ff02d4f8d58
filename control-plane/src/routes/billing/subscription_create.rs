//! 1.3 `POST /api/stripe/subscription.create`.

use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use crate::stripe::Intent;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// Which plan's price the trial converts to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSubscriptionRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// A `price` of PLANS_CONFIG (lookup key or price id).
    #[schema(example = "plan_starter_m")]
    pub price_lookup: String,
}

/// The trial subscription.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSubscriptionResponse {
    #[schema(example = "sub_1Q2x")]
    pub subscription_id: String,
    /// `trialing` for a new subscription; an existing live one is returned as it is.
    #[schema(example = "trialing")]
    pub status: String,
    /// When the trial ends (RFC 3339, UTC).
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// Only in a 202: the payment of the subscription's open first invoice (or, for a resumed one, its resumption
    /// invoice) needs the customer — 3-D Secure, or another card after a decline. Confirm it with Stripe.js
    /// (`stripe.confirmCardPayment(clientSecret)`); once paid, the subscription becomes `active` (through Stripe's
    /// webhooks) and the paid plan's limits apply. An `incomplete` one left unpaid for 23 h expires
    /// (`incomplete_expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "pi_3Q2x_secret_9Ab")]
    pub client_secret: Option<String>,
}

/// Starts the org's trial; while it has a live subscription, returns that instead of creating another. Without a
/// trial (the org's is spent), the first period is charged at once; when that payment needs the customer (3-D
/// Secure), 202 with `{subscriptionId, status:"incomplete", clientSecret}` — nothing is paid yet and the org's
/// limits stay unsubscribed until the invoice is paid. A call while the subscription is `incomplete` returns it the
/// same way.
#[utoipa::path(
    post, path = "/api/stripe/subscription.create", tag = "billing",
    request_body = CreateSubscriptionRequest,
    responses(
        (status = 200, description = "The live subscription (created now, or the one the org has)", body = CreateSubscriptionResponse),
        (status = 202, description = "The subscription waits for its first payment (`incomplete`; or `past_due` after resuming a paused one): confirm `clientSecret` with Stripe.js (3-D Secure, or another card after a decline)", body = CreateSubscriptionResponse),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The org has no Stripe customer yet; or its trial is spent and it has no payment method; or another billing change of this org is in progress", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn create_subscription(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    intent: Intent,
    JsonBody(req): JsonBody<CreateSubscriptionRequest>,
) -> ApiResult<Response> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let created = app
        .billing()?
        .create_subscription(&org, &req.price_lookup, &intent)
        .await?;
    let code = if created.client_secret.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        code,
        Json(CreateSubscriptionResponse {
            subscription_id: created.subscription_id,
            status: created.status.as_str().to_owned(),
            trial_ends_at: created.trial_ends_at,
            client_secret: created.client_secret,
        }),
    )
        .into_response())
}
