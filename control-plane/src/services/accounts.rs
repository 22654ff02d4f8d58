//! Orgs with their billing state, for the metering routes: the shared billing cache
//! (`tollgate_common::billing_cache`), so a warm `quota/check` or `entitlements.read` costs no query. The cache is
//! kept in step by `jobs::caches` (PostgreSQL's announcements, and the safety net) and reloaded by billing right
//! after each subscription change it commits, so a handler's answer is followed by reads that show it.

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::services::usage::Account;
use std::sync::Arc;
use tollgate_common::billing_cache::BillingCache;
use tollgate_common::domain::OrgId;

/// The control plane's billing cache (no per-entry extension).
pub type Accounts = BillingCache<()>;

/// The org named by the caller's scope, with its billing state: cached, or loaded (404 naming `orgId` for an
/// unknown org).
pub async fn account(app: &App, org: OrgId) -> ApiResult<Arc<Account>> {
    let id = app
        .accounts
        .id_of(&app.pg, &org)
        .await?
        .ok_or_else(ApiError::unknown_org)?;
    let entry = app.accounts.get(&app.pg, id, &org).await?;
    Ok(Arc::new(Account {
        org,
        id,
        billing: entry.billing(),
        cap: entry.cap(),
    }))
}
