//! Every HTTP route. One file per endpoint under `routes/<domain>/<action>.rs`; the `utoipa` annotations on the
//! handlers are the OpenAPI document, so the two cannot drift.

pub mod admin;
pub mod billing;
pub mod diag;
pub mod jobs;
pub mod keys;
pub mod me;
pub mod openapi;
pub mod ops;
pub mod orgs;
pub mod quota;
pub mod stigg;
pub mod usage;
pub mod webhooks;
pub mod widgets;

use crate::app::AppState;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate control plane",
        description = "Tenants, API keys, billing state and the metering API. Every error is RFC 9457 problem+json."
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ProblemDoc, QuotaExceededDoc))
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "clerk",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("Clerk session token (RS256)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "Org API key `tg_…` (also accepted as `Authorization: Bearer tg_…`)",
            ))),
        );
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("TOLLGATE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// The shape of every error body (RFC 9457), for the OpenAPI document.
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    #[serde(rename = "type")]
    #[schema(example = "/problems/invalid-field")]
    pub kind: String,
    #[schema(example = "Invalid field")]
    pub title: String,
    #[schema(example = 422)]
    pub status: u16,
    #[schema(example = "name: must be 1 to 200 characters")]
    pub detail: String,
    /// The request field at fault, for bad input.
    #[schema(example = "name")]
    pub field: Option<String>,
    /// For a 403 refusing a session's organization role: the roles that may make the call (`TOLLGATE_ADMIN_ROLES`).
    #[serde(rename = "requiredRoles")]
    #[schema(example = json!(["org:admin"]))]
    pub required_roles: Option<Vec<String>>,
}

/// The standard denial envelope (CONTRACT 4.3): a problem with the quota's state, sent with `Retry-After` by the proxy
/// and by `quota/check`, byte for byte the same.
#[derive(Serialize, ToSchema)]
#[schema(as = QuotaExceeded)]
#[serde(rename_all = "camelCase")]
pub struct QuotaExceededDoc {
    /// `/problems/quota-exceeded`, or `/problems/spend-cap-reached` when the org's spend cap set the bound.
    #[serde(rename = "type")]
    #[schema(example = "/problems/quota-exceeded")]
    pub kind: String,
    #[schema(example = "Quota exceeded")]
    pub title: String,
    #[schema(example = 429)]
    pub status: u16,
    #[schema(example = "api_call quota of 1000 exhausted for period 2026-12")]
    pub detail: String,
    /// Always `false`.
    pub allow: bool,
    /// Always 0.
    pub remaining: u64,
    #[schema(example = "api_call")]
    pub metric: String,
    /// Where admission stops in the period: the included units, or with overage the bound.
    pub limit: u64,
    /// Units used in the period.
    pub used: u64,
    #[schema(example = "2026-12")]
    pub period_key: String,
    /// When the period ends and the quota resets (RFC 3339).
    #[schema(example = "2027-01-01T00:00:00Z")]
    pub reset_at: String,
}

/// The API routes and their OpenAPI document.
pub fn api() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(orgs::create::create_org))
        .routes(routes!(keys::create::create_key))
        .routes(routes!(keys::list::list_keys))
        .routes(routes!(keys::revoke::revoke_key))
        .routes(routes!(diag::smoke::smoke))
        .routes(routes!(usage::seed::seed_usage))
        .routes(routes!(usage::record::record_usage))
        .routes(routes!(usage::history::usage_history))
        .routes(routes!(usage::reconcile::reconcile))
        .routes(routes!(me::entitlements::read_entitlements))
        .routes(routes!(quota::check::check_quota))
        .routes(routes!(quota::deny_envelope::deny_envelope_example))
        .routes(routes!(admin::quotas_reset::reset_quotas))
        .routes(routes!(admin::webhooks_replay::replay_webhooks))
        .routes(routes!(admin::webhooks_list::list_webhooks))
        .routes(routes!(admin::stigg_outbox::list_outbox))
        .routes(routes!(admin::stigg_outbox::requeue_outbox))
        .routes(routes!(admin::jobs::list_jobs))
        .routes(routes!(admin::jobs::replay_jobs))
        .routes(routes!(billing::customer_ensure::ensure_customer))
        .routes(routes!(billing::subscription_create::create_subscription))
        .routes(routes!(billing::setup_intent::create_setup_intent))
        .routes(routes!(billing::default_method::set_default_method))
        .routes(routes!(billing::portal::create_portal_session))
        .routes(routes!(billing::invoices::list_invoices))
        .routes(routes!(billing::plans_preview::preview_plan_change))
        .routes(routes!(billing::plans_upgrade::upgrade_now))
        .routes(routes!(billing::plans_downgrade::schedule_downgrade))
        .routes(routes!(billing::budget::set_budget))
        .routes(routes!(billing::budget::clear_budget))
        .routes(routes!(stigg::provision::provision))
        .routes(routes!(webhooks::stripe_receive::receive_stripe_event))
        .routes(routes!(webhooks::endpoints_set::set_endpoint))
        .routes(routes!(jobs::stripe_process::process_stripe_event))
        .split_for_parts()
}
