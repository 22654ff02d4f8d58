//! Org identity: the one place that reads how an org is named. An org has an internal id (`orgs.id`, what every
//! other table refers to), a Clerk id (`orgs.clerk_org_id`, what callers name it by) and, once billing knows it, a
//! Stripe customer (`orgs.stripe_customer_id`). Each mapping never changes once written, so callers may cache it.

use crate::domain::OrgId;
use sqlx::PgExecutor;

/// The internal id of the org Clerk names `org`, if Tollgate knows it.
pub async fn id_by_clerk<'e>(
    pg: impl PgExecutor<'e>,
    org: &OrgId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orgs WHERE clerk_org_id = $1")
        .bind(org.as_str())
        .fetch_optional(pg)
        .await
}

/// The Clerk id of the org with internal id `id`, if it exists (a stored id that no longer parses is `None`).
pub async fn clerk_by_id<'e>(
    pg: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<OrgId>, sqlx::Error> {
    let raw: Option<String> = sqlx::query_scalar("SELECT clerk_org_id FROM orgs WHERE id = $1")
        .bind(id)
        .fetch_optional(pg)
        .await?;
    Ok(raw.and_then(|raw| OrgId::parse(&raw).ok()))
}

/// The internal id of the org whose Stripe customer is `customer`, if an org owns it.
pub async fn id_by_stripe_customer<'e>(
    pg: impl PgExecutor<'e>,
    customer: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orgs WHERE stripe_customer_id = $1")
        .bind(customer)
        .fetch_optional(pg)
        .await
}
