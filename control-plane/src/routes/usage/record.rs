//! 4.2 `POST /api/usage/record`.

use crate::app::AppState;
use crate::auth::{AnyPrincipal, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::ProblemDoc;
use crate::services::usage::{self, MAX_RECORD_VALUE, NewRecord, RecordedUsage};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// Usage to record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    #[schema(example = "api_call")]
    pub metric: String,
    /// A positive integer, at most 1 000 000 000.
    #[schema(example = 3)]
    #[serde(deserialize_with = "crate::extract::integer")]
    pub value: u64,
    /// When the usage happened (RFC 3339, year 2000 or later); decides the period. More than 5 minutes ahead of
    /// the server's clock is a 409; in a period that ended more than `TOLLGATE_RETENTION_USAGE_RECORDS_DAYS` ago
    /// (default 35), a 422.
    #[schema(pattern = "^[2-9][0-9]{3}-")]
    pub occurred_at: DateTime<Utc>,
    /// The caller's idempotency key, unique per org (`requestId` is accepted too).
    #[serde(rename = "request_id", alias = "requestId")]
    #[schema(example = "req_7f3a")]
    pub request_id: String,
}

impl RecordRequest {
    fn validate(self, app: &crate::app::App) -> ApiResult<NewRecord> {
        let metric = app.usage.metric(&self.metric)?;
        if self.value == 0 || self.value > MAX_RECORD_VALUE {
            return Err(ApiError::invalid(
                "value",
                format!("must be between 1 and {MAX_RECORD_VALUE}"),
            ));
        }
        crate::validate::request_id(&self.request_id)?;
        Ok(NewRecord {
            metric,
            value: self.value,
            occurred_at: self.occurred_at,
            request_id: self.request_id,
        })
    }
}

/// Records usage once per `request_id`; a repeat returns the identical body and counts nothing.
#[utoipa::path(
    post, path = "/api/usage/record", tag = "usage",
    request_body = RecordRequest,
    responses(
        (status = 200, description = "Recorded (or recorded before: the identical body)", body = RecordedUsage),
        (status = 400, description = "Malformed JSON", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "request_id already used for another metric or value, or occurredAt ahead of the server's clock", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid, or occurredAt is in a period past its retention", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("apiKey" = []), ("operator" = []))
)]
pub async fn record_usage(
    caller: Caller<AnyPrincipal>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<RecordRequest>,
) -> ApiResult<Response> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    let record = req.validate(&app)?;
    let account = usage::account(&app, org).await?;
    let body = app.usage.record(&account, &record).await?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
