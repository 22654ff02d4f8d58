//! Org API keys.

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;
use std::time::Duration;
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

/// How long a revoke holds the claim on announcing a revocation. Past it, a repeat or the sweep announces again, so
/// a replica that claimed it and stopped cannot leave it unannounced. Far above an announce's worst case (two Redis
/// commands of at most `RESPONSE_TIMEOUT` each, with one retry).
const ANNOUNCE_LEASE: Duration = Duration::from_secs(10);

/// Revocations the sweep claims per pass.
const SWEEP_BATCH: i64 = 100;

/// A revocation whose announcement a call claimed, until `claim` (the lease's end).
#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    key_hash: Vec<u8>,
    prefix: String,
    claim: DateTime<Utc>,
}

impl Claimed {
    /// What is announced.
    fn revocation(&self) -> anyhow::Result<keys::Revocation> {
        // Both are checked by the table's constraints.
        let key_hash: keys::KeyHash = self
            .key_hash
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("stored key hash has the wrong length"))?;
        keys::Revocation::new(&self.prefix, key_hash)
            .ok_or_else(|| anyhow::anyhow!("stored key prefix is malformed"))
    }
}

/// The revoke statement's answer: the claim's columns are NULL when the key was already revoked.
#[derive(sqlx::FromRow)]
struct RevokeRow {
    id: Option<Uuid>,
    key_hash: Option<Vec<u8>>,
    prefix: Option<String>,
    claim: Option<DateTime<Utc>>,
}

/// Revokes a key (idempotently) and announces it to every proxy. `org_id` limits the key to one org; `None`
/// (the operator) reaches any.
///
/// A revocation is announced once: the call that revokes the key claims the announcement in the same statement
/// (`announce_due_at`, a lease), announces, and clears the claim. Revoking an already revoked key writes nothing and
/// announces nothing, so a stream of repeats cannot make the proxies re-resolve their keys, and concurrent revokes
/// of one key announce once (the row lock orders them; the later ones find the claim taken). PostgreSQL is written
/// first and this replica's cache forgets the key, so it is refused here at once; the announce then tells the
/// proxies and the other control planes. If the announce fails the call fails with 503 and hands the claim back,
/// so repeating it re-announces (and so does [`announce_owed`], the sweep, if nobody repeats it).
#[tracing::instrument(skip(app), fields(key.id = %key_id))]
pub async fn revoke(app: &App, org_id: Option<i64>, key_id: Uuid) -> ApiResult<()> {
    // One statement: the claim (revoking the key if it was not yet), and whether the key exists at all. The outer
    // SELECT reads the row as it was before the UPDATE, so it finds a key the UPDATE left alone.
    let row: Option<RevokeRow> = sqlx::query_as(
        "WITH claimed AS (
             UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()), announce_due_at = now() + $3::interval
              WHERE id = $1 AND ($2::bigint IS NULL OR org_id = $2)
                AND (revoked_at IS NULL OR announce_due_at <= now())
             RETURNING id, key_hash, prefix, announce_due_at
         )
         SELECT c.id, c.key_hash, c.prefix, c.announce_due_at AS claim
           FROM api_keys k LEFT JOIN claimed c ON c.id = k.id
          WHERE k.id = $1 AND ($2::bigint IS NULL OR k.org_id = $2)",
    )
    .bind(key_id)
    .bind(org_id)
    .bind(ANNOUNCE_LEASE)
    .fetch_optional(&app.pg)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::NotFound {
            field: "keyId",
            detail: "no such key in this organization".to_owned(),
        });
    };
    let (Some(id), Some(key_hash), Some(prefix), Some(claim)) =
        (row.id, row.key_hash, row.prefix, row.claim)
    else {
        // Already revoked, and announced or being announced by the call that claimed it.
        tracing::debug!("api key already revoked");
        return Ok(());
    };
    let claimed = Claimed {
        id,
        key_hash,
        prefix,
        claim,
    };
    let revocation = claimed.revocation()?;
    announce(app, &claimed, &revocation).await.map_err(|e| {
        tracing::warn!(error = %e, "revocation stored but not announced");
        ApiError::Unavailable(
            "keyId: the key is revoked, but announcing it to the proxies failed; repeat the call"
                .to_owned(),
        )
    })?;
    tracing::info!("api key revoked");
    Ok(())
}

/// Announces the revocations still owed (their announce failed and was not repeated, or the replica announcing
/// them stopped), claiming them like [`revoke`] does; returns how many were announced. Run by `jobs::caches`.
pub async fn announce_owed(app: &App) -> anyhow::Result<usize> {
    let owed: Vec<Claimed> = sqlx::query_as(
        "UPDATE api_keys SET announce_due_at = now() + $1::interval
          WHERE id IN (SELECT id FROM api_keys WHERE announce_due_at <= now()
                        ORDER BY announce_due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id, key_hash, prefix, announce_due_at AS claim",
    )
    .bind(ANNOUNCE_LEASE)
    .bind(SWEEP_BATCH)
    .fetch_all(&app.pg)
    .await?;
    let mut announced = 0;
    let mut failure = None;
    for claimed in &owed {
        // Each one failing is handed back, so the others are tried now rather than after their lease.
        let outcome = match claimed.revocation() {
            Ok(revocation) => announce(app, claimed, &revocation)
                .await
                .map_err(|e| anyhow::Error::new(e).context("announcing a key revocation")),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(key.id = %claimed.id, "owed key revocation announced");
                announced += 1;
            }
            Err(e) => failure = Some(e),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(announced),
    }
}

/// Announces a revocation whose announcement this call claimed, then releases the claim: cleared once Redis took
/// the announcement, handed back (due now) when it did not.
async fn announce(
    app: &App,
    claimed: &Claimed,
    revocation: &keys::Revocation,
) -> redis::RedisResult<()> {
    // This replica refuses the key from now on; the others hear the announcement.
    app.keys.forget(revocation);
    let mut redis = app.redis.clone();
    let announced =
        keys::announce_revocation(&mut redis, &app.config.common.redis.namespace, revocation).await;
    if announced.is_err() {
        app.metrics
            .dependency_errors
            .with_label_values(&["redis"])
            .inc();
    }
    // Only our own claim: one that expired and was taken again is the new holder's to release.
    let released = sqlx::query(
        "UPDATE api_keys SET announce_due_at = CASE WHEN $3 THEN NULL ELSE now() END
          WHERE id = $1 AND announce_due_at = $2",
    )
    .bind(claimed.id)
    .bind(claimed.claim)
    .bind(announced.is_ok())
    .execute(&app.pg)
    .await;
    if let Err(e) = released {
        // The lease runs out by itself: the revocation is then announced once more, or its retry waits for it.
        app.metrics
            .dependency_errors
            .with_label_values(&["postgres"])
            .inc();
        tracing::warn!(error = %e, key.id = %claimed.id, "cannot release the claim on a revocation's announcement");
    }
    announced.map(|_epoch| ())
}
