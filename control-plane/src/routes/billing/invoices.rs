//! 6.1 `GET /api/invoices.list?cursor=&limit=`.

use crate::app::AppState;
use crate::auth::{Caller, UserOrOperator};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::{IntoParams, ToSchema};

/// Invoices per page by default.
pub const DEFAULT_LIMIT: u8 = 10;
/// The JSON Schema pattern of a cursor (an invoice id).
pub const CURSOR_PATTERN: &str = "^in_[A-Za-z0-9_]{1,250}$";

/// Which page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InvoicesQuery {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[param(value_type = Option<String>)]
    pub org_id: Option<OrgId>,
    /// The last `id` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 100 (default 10).
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub limit: Option<u8>,
}

/// One invoice.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceItem {
    #[schema(example = "in_1Q2x")]
    pub id: String,
    /// Minor units.
    pub total: i64,
    #[schema(example = "usd")]
    pub currency: String,
    #[schema(example = "paid")]
    pub status: String,
    /// The hosted invoice page.
    pub url: Option<String>,
    /// RFC 3339, UTC.
    pub created: DateTime<Utc>,
}

/// The org's invoices, newest first.
#[utoipa::path(
    get, path = "/api/invoices.list", tag = "billing",
    params(InvoicesQuery),
    responses(
        (status = 200, description = "A page of invoices, newest first; the next page starts after the last id", body = [InvoiceItem]),
        (status = 409, description = "The org has no Stripe customer yet", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("operator" = []))
)]
pub async fn list_invoices(
    caller: Caller<UserOrOperator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<InvoicesQuery>,
) -> ApiResult<Json<Vec<InvoiceItem>>> {
    let org = caller.principal.org_scope(query.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let limit = crate::validate::page_limit(query.limit, DEFAULT_LIMIT)?;
    if let Some(cursor) = &query.cursor {
        let ok = cursor.strip_prefix("in_").is_some_and(|rest| {
            (1..=250).contains(&rest.len())
                && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if !ok {
            return Err(ApiError::invalid(
                "cursor",
                "must be the id of an invoice (in_…)",
            ));
        }
    }
    let invoices = app
        .billing()?
        .list_invoices(&org, query.cursor.as_deref(), limit)
        .await?;
    Ok(Json(
        invoices
            .into_iter()
            .map(|i| InvoiceItem {
                id: i.id,
                total: i.total,
                currency: i.currency,
                status: i.status,
                url: i.url,
                created: i.created,
            })
            .collect(),
    ))
}
