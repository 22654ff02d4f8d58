//! `GET /api/admin/webhooks.list`: the operator's view of stored Stripe events — above all the `ignored` ones
//! (terminal, never retried: a customer no org owns, a price not in PLANS_CONFIG, a deleted object), which 8.1
//! (`/api/admin/webhooks.replay`) can reprocess.

use crate::app::AppState;
use crate::auth::{Caller, OperatorOnly};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::routes::ProblemDoc;
use crate::services::billing::events::{ListedEvent, is_event_id};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

/// Default page size.
const DEFAULT_LIMIT: u8 = 50;

/// An event's stored status.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Received, not yet processed.
    Pending,
    /// Failed transiently; retried with backoff.
    Failed,
    /// Mirrored.
    Applied,
    /// Nothing Tollgate can mirror, for good (with its reason).
    Ignored,
    /// Failed `TOLLGATE_QUEUE_MAX_ATTEMPTS` times; never retried, replayable by 8.1.
    Dead,
}

impl EventStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Failed => "failed",
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Dead => "dead",
        }
    }
}

/// Which events.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with this status (default: all).
    #[param(inline)]
    pub status: Option<EventStatus>,
    /// 1 to 100 (default 50).
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub limit: Option<u8>,
    /// The last `eventId` of the previous page.
    pub after: Option<String>,
}

/// Stored Stripe events, newest first.
#[utoipa::path(
    get, path = "/api/admin/webhooks.list", tag = "admin",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of stored events, newest first; the next page starts after the last eventId", body = [ListedEvent]),
        (status = 404, description = "`after` names no stored event", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("operator" = []))
)]
pub async fn list_webhooks(
    _caller: Caller<OperatorOnly>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<EventsQuery>,
) -> ApiResult<Json<Vec<ListedEvent>>> {
    let limit = crate::validate::page_limit(query.limit, DEFAULT_LIMIT)?;
    if let Some(after) = &query.after
        && !is_event_id(after)
    {
        return Err(ApiError::invalid(
            "after",
            "must be a Stripe event id (evt_…)",
        ));
    }
    let events = app
        .billing()?
        .list_events(
            query.status.map(EventStatus::as_str),
            i64::from(limit),
            query.after.as_deref(),
        )
        .await?;
    Ok(Json(events))
}
