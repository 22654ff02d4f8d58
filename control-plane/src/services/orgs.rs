//! Tenants.

use crate::error::{ApiError, ApiResult};
use sqlx::PgPool;
use tollgate_common::domain::OrgId;

/// A validated org to create.
#[derive(Debug, Clone)]
pub struct NewOrg {
    pub org: OrgId,
    pub name: String,
    pub owner_user_id: String,
}

/// Whether [`create`] made the org or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyExisted,
}

#[derive(sqlx::FromRow)]
struct OrgRow {
    name: String,
    owner_user_id: String,
}

/// Creates the org, or confirms that the identical org exists. A different owner or name under the same Clerk id
/// is a conflict: `orgs.create` never updates.
///
/// Safe under concurrency: `ON CONFLICT DO NOTHING` waits for a racing insert of the same id to commit, and the
/// follow-up read then sees it.
#[tracing::instrument(skip_all, fields(org.id = %new.org))]
pub async fn create(pg: &PgPool, new: &NewOrg) -> ApiResult<Outcome> {
    let inserted = sqlx::query(
        "INSERT INTO orgs (clerk_org_id, name, owner_user_id) VALUES ($1, $2, $3)
         ON CONFLICT (clerk_org_id) DO NOTHING",
    )
    .bind(new.org.as_str())
    .bind(&new.name)
    .bind(&new.owner_user_id)
    .execute(pg)
    .await?
    .rows_affected();
    if inserted == 1 {
        tracing::info!("org created");
        return Ok(Outcome::Created);
    }
    let existing: OrgRow =
        sqlx::query_as("SELECT name, owner_user_id FROM orgs WHERE clerk_org_id = $1")
            .bind(new.org.as_str())
            .fetch_one(pg)
            .await?;
    if existing.owner_user_id != new.owner_user_id {
        return Err(ApiError::Conflict {
            field: "ownerUserId",
            detail: "this orgId already exists with a different owner".to_owned(),
        });
    }
    if existing.name != new.name {
        return Err(ApiError::Conflict {
            field: "name",
            detail: "this orgId already exists with a different name".to_owned(),
        });
    }
    Ok(Outcome::AlreadyExisted)
}
