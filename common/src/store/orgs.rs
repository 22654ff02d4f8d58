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

/// An org's identity: its internal id and, once billing linked one, its Stripe customer.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Identity {
    /// `orgs.id`.
    pub id: i64,
    /// `orgs.stripe_customer_id`, once billing linked one.
    pub stripe_customer: Option<String>,
}

/// The identity of the org Clerk names `org`, if Tollgate knows it.
pub async fn identity_by_clerk<'e>(
    pg: impl PgExecutor<'e>,
    org: &OrgId,
) -> Result<Option<Identity>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, stripe_customer_id AS stripe_customer FROM orgs WHERE clerk_org_id = $1",
    )
    .bind(org.as_str())
    .fetch_optional(pg)
    .await
}

/// An org locked for the rest of the transaction, with its name (what Stigg shows).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Locked {
    /// `orgs.id`.
    pub id: i64,
    /// `orgs.name`.
    pub name: String,
    /// `orgs.stripe_customer_id`, once billing linked one.
    pub stripe_customer: Option<String>,
}

/// Locks the org Clerk names `org` (`FOR UPDATE`, until the transaction ends) and reads it, if Tollgate knows it.
pub async fn lock_by_clerk<'e>(
    tx: impl PgExecutor<'e>,
    org: &OrgId,
) -> Result<Option<Locked>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, stripe_customer_id AS stripe_customer FROM orgs WHERE clerk_org_id = $1 FOR UPDATE",
    )
    .bind(org.as_str())
    .fetch_optional(tx)
    .await
}

/// Links `customer` to the org with internal id `id` unless it has one already; the org's name when this call
/// linked it, `None` when it already had a customer (or does not exist).
pub async fn link_stripe_customer<'e>(
    pg: impl PgExecutor<'e>,
    id: i64,
    customer: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE orgs SET stripe_customer_id = $2, updated_at = now()
          WHERE id = $1 AND stripe_customer_id IS NULL RETURNING name",
    )
    .bind(id)
    .bind(customer)
    .fetch_optional(pg)
    .await
}

/// Links `customer` to the org Clerk names `org` unless it has one already; the org's internal id when this call
/// linked it, `None` when it already had a customer (or does not exist).
pub async fn link_stripe_customer_by_clerk<'e>(
    pg: impl PgExecutor<'e>,
    org: &OrgId,
    customer: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE orgs SET stripe_customer_id = $2, updated_at = now()
          WHERE clerk_org_id = $1 AND stripe_customer_id IS NULL RETURNING id",
    )
    .bind(org.as_str())
    .bind(customer)
    .fetch_optional(pg)
    .await
}

/// The internal ids of every org, in order.
pub async fn all_ids<'e>(pg: impl PgExecutor<'e>) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orgs ORDER BY id")
        .fetch_all(pg)
        .await
}
