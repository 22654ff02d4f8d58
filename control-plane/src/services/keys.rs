//! Org API keys.

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;
use tollgate_common::keys;
use uuid::Uuid;

/// A key just issued; `key` is shown to the caller once and never stored.
pub struct IssuedKey {
    pub key_id: Uuid,
    pub key: SecretString,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
}

/// A stored key as listed (never the key itself).
#[derive(Debug, sqlx::FromRow)]
pub struct KeySummary {
    pub key_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Issues a new key for the org.
#[tracing::instrument(skip_all, fields(org.internal_id = org_id))]
pub async fn create(pg: &PgPool, org_id: i64, name: &str) -> ApiResult<IssuedKey> {
    let generated = keys::generate();
    let key_id = Uuid::now_v7();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO api_keys (id, org_id, name, key_hash, prefix) VALUES ($1, $2, $3, $4, $5)
         RETURNING created_at",
    )
    .bind(key_id)
    .bind(org_id)
    .bind(name)
    .bind(generated.hash.as_slice())
    .bind(&generated.display_prefix)
    .fetch_one(pg)
    .await?;
    tracing::info!(key.id = %key_id, "api key issued");
    Ok(IssuedKey {
        key_id,
        key: generated.secret,
        prefix: generated.display_prefix,
        created_at,
    })
}

/// The org's active keys, newest first.
pub async fn list(pg: &PgPool, org_id: i64) -> ApiResult<Vec<KeySummary>> {
    Ok(sqlx::query_as(
        "SELECT id AS key_id, name, prefix, created_at, last_used_at FROM api_keys
          WHERE org_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, id DESC",
    )
    .bind(org_id)
    .fetch_all(pg)
    .await?)
}

/// Revokes a key (idempotently) and announces it to every proxy. `org_id` limits the key to one org; `None`
/// (the operator) reaches any.
///
/// PostgreSQL is written first and this replica's cache forgets the key, so it is refused here at once; the
/// announce then tells the proxies and the other control planes. If the announce fails the call fails with 503, and repeating it re-announces.
#[tracing::instrument(skip(app), fields(key.id = %key_id))]
pub async fn revoke(app: &App, org_id: Option<i64>, key_id: Uuid) -> ApiResult<()> {
    let hash: Vec<u8> = sqlx::query_scalar(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
          WHERE id = $1 AND ($2::bigint IS NULL OR org_id = $2) RETURNING key_hash",
    )
    .bind(key_id)
    .bind(org_id)
    .fetch_optional(&app.pg)
    .await?
    .ok_or_else(|| ApiError::NotFound {
        field: "keyId",
        detail: "no such key in this organization".to_owned(),
    })?;
    let hash: keys::KeyHash = hash
        .try_into()
        .map_err(|_| anyhow::anyhow!("stored key hash has the wrong length"))?;
    // This replica refuses the key from now on; the others hear the announcement below.
    app.keys.forget(&hash);
    let mut redis = app.redis.clone();
    keys::announce_revocation(&mut redis, &app.config.common.redis.namespace, &hash)
        .await
        .map_err(|e| {
            app.metrics.dependency_errors.with_label_values(&["redis"]).inc();
            tracing::warn!(error = %e, "revocation stored but not announced");
            ApiError::Unavailable(
                "keyId: the key is revoked, but announcing it to the proxies failed; repeat the call".to_owned(),
            )
        })?;
    tracing::info!("api key revoked");
    Ok(())
}
