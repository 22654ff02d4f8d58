//! `GET /api/admin/jobs.list` and `POST /api/admin/jobs.replay`: the operator's view of the one queue, every kind
//! alike (`crate::queue`). The kinds' own views (`webhooks.list` / 8.1, `stigg.outbox` / `stigg.requeue`) stay.

use crate::app::AppState;
use crate::auth::{Caller, OperatorOnly};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
use crate::queue::{self, ListedJob, Spec};
use crate::services::billing::events::STRIPE_EVENTS;
use crate::services::billing::meter_reports::METER_REPORTS;
use crate::services::outbound::WEBHOOK_DELIVERIES;
use crate::services::stigg::STIGG_OPS;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most ids one replay takes.
pub const MAX_JOB_IDS: usize = 500;
/// A kind of job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A received Stripe event.
    StripeEvent,
    /// A Stigg operation of the outbox.
    StiggOp,
    /// An outgoing webhook delivery (a usage alert to an org's endpoint).
    WebhookDelivery,
    /// A period's overage reported to Stripe's meter.
    MeterReport,
}

impl JobKind {
    fn spec(self) -> &'static Spec {
        match self {
            Self::StripeEvent => &STRIPE_EVENTS,
            Self::StiggOp => &STIGG_OPS,
            Self::WebhookDelivery => &WEBHOOK_DELIVERIES,
            Self::MeterReport => &METER_REPORTS,
        }
    }
}

/// The states every kind shares.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for its first attempt (or replayed).
    Pending,
    /// Failed; retried with backoff.
    Failed,
    /// Failed `TOLLGATE_QUEUE_MAX_ATTEMPTS` times: never retried, replayable.
    Dead,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

/// Which jobs.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// The kind.
    #[param(inline)]
    pub kind: JobKind,
    /// Only jobs in this state (default: all, finished ones included).
    #[param(inline)]
    pub status: Option<JobStatus>,
    /// 1 to 100 (default 100).
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub limit: Option<u8>,
}

/// The newest jobs of a kind.
#[utoipa::path(
    get, path = "/api/admin/jobs.list", tag = "admin",
    params(JobsQuery),
    responses((status = 200, description = "The newest jobs of the kind, newest first", body = [ListedJob])),
    security(("operator" = []))
)]
pub async fn list_jobs(
    _caller: Caller<OperatorOnly>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<JobsQuery>,
) -> ApiResult<Json<Vec<ListedJob>>> {
    let limit = crate::validate::page_limit(query.limit, crate::validate::MAX_PAGE)?;
    let status = query.status.map(JobStatus::as_str);
    Ok(Json(
        queue::list(&app.pg, query.kind.spec(), status, i64::from(limit)).await?,
    ))
}

/// Jobs to run again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayJobsRequest {
    /// The kind.
    #[schema(inline)]
    pub kind: JobKind,
    /// 1 to 500 job ids of that kind (as `jobs.list` shows them).
    pub ids: Vec<String>,
}

/// What was replayed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayJobsResponse {
    /// Jobs made due now, their attempts counted from 0 again.
    pub replayed: Vec<String>,
    /// Ids that are not failed or dead (done, waiting, being run right now, or unknown).
    pub skipped: Vec<String>,
}

/// Makes failed or dead jobs due now; each kind's order is kept (a replayed job waits for the earlier ones of its
/// key).
#[utoipa::path(
    post, path = "/api/admin/jobs.replay", tag = "admin",
    request_body = ReplayJobsRequest,
    responses((status = 200, description = "Replayed", body = ReplayJobsResponse)),
    security(("operator" = []))
)]
pub async fn replay_jobs(
    _caller: Caller<OperatorOnly>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<ReplayJobsRequest>,
) -> ApiResult<Json<ReplayJobsResponse>> {
    let spec = req.kind.spec();
    if req.ids.is_empty() || req.ids.len() > MAX_JOB_IDS {
        return Err(ApiError::invalid(
            "ids",
            format!("must hold 1 to {MAX_JOB_IDS} ids"),
        ));
    }
    if req.ids.iter().any(|id| id.is_empty() || id.len() > 255) {
        return Err(ApiError::invalid("ids", "each id is 1 to 255 characters"));
    }
    let replayed = queue::replay(&app.pg, spec, &req.ids).await?;
    match req.kind {
        JobKind::StripeEvent => {
            if let Some(billing) = &app.billing {
                billing.wake.notify_one();
            }
        }
        JobKind::StiggOp => app.stigg.wake.notify_one(),
        JobKind::WebhookDelivery => app.outbound.wake.notify_one(),
        JobKind::MeterReport => {
            if let Some(reporter) = &app.meter_reports {
                reporter.wake.notify_one();
            }
        }
    }
    let skipped = req
        .ids
        .into_iter()
        .filter(|id| !replayed.contains(id))
        .collect();
    tracing::info!(
        queue.kind = spec.kind,
        replayed = replayed.len(),
        "jobs replayed"
    );
    Ok(Json(ReplayJobsResponse { replayed, skipped }))
}
