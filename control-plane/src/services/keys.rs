//! Org API keys: the [`KeyService`] (its own dependencies, not the whole app) and [`KeysError`], mapped to
//! problem+json once in `error.rs`. The routes of `routes/keys` and the sweep of `jobs::caches` both call it.

use chrono::{DateTime, Utc};
use prometheus::IntCounterVec;
use secrecy::SecretString;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tollgate_common::domain::OrgId;
use tollgate_common::keys::{self, cache::KeyCache};
use tollgate_common::store::orgs;
use tollgate_common::store::redis::RedisConn;
use uuid::Uuid;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// No such org (404 naming `orgId`).
    #[error("orgId: no such organization")]
    UnknownOrg,
    /// No such key in the org (404 naming `keyId`).
    #[error("keyId: no such key in this organization")]
    UnknownKey,
    /// The key is revoked, but announcing it to the proxies failed (503: repeating the call announces it).
    #[error("keyId: the key is revoked, but announcing it to the proxies failed; repeat the call")]
    NotAnnounced(#[source] redis::RedisError),
    /// A stored key that is not what the table's constraints promise.
    #[error("stored key is malformed: {0}")]
    Corrupt(&'static str),
    /// PostgreSQL failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// Issues, lists and revokes org API keys, and announces revocations to every proxy and control plane.
pub struct KeyService {
    pg: PgPool,
    redis: RedisConn,
    /// The Redis namespace revocations are announced in.
    namespace: String,
    /// This replica's resolved keys: a revocation is forgotten here at once.
    cache: Arc<KeyCache>,
    /// `tollgate_cp_dependency_errors_total{dependency}`.
    dependency_errors: IntCounterVec,
}

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
    fn revocation(&self) -> Result<keys::Revocation, KeysError> {
        // Both are checked by the table's constraints.
        let key_hash: keys::KeyHash = self
            .key_hash
            .as_slice()
            .try_into()
            .map_err(|_| KeysError::Corrupt("its hash has the wrong length"))?;
        keys::Revocation::new(&self.prefix, key_hash).ok_or(KeysError::Corrupt("its prefix"))
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

impl KeyService {
    /// A service over these dependencies.
    pub fn new(
        pg: PgPool,
        redis: RedisConn,
        namespace: String,
        cache: Arc<KeyCache>,
        dependency_errors: IntCounterVec,
    ) -> Self {
        Self {
            pg,
            redis,
            namespace,
            cache,
            dependency_errors,
        }
    }

    /// The internal id of `org`.
    async fn org_id(&self, org: &OrgId) -> Result<i64, KeysError> {
        orgs::id_by_clerk(&self.pg, org)
            .await?
            .ok_or(KeysError::UnknownOrg)
    }

    /// Issues a new key for the org.
    #[tracing::instrument(skip_all, fields(org.id = %org))]
    pub async fn create(&self, org: &OrgId, name: &str) -> Result<IssuedKey, KeysError> {
        let org_id = self.org_id(org).await?;
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
        .fetch_one(&self.pg)
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
    pub async fn list(&self, org: &OrgId) -> Result<Vec<KeySummary>, KeysError> {
        let org_id = self.org_id(org).await?;
        Ok(sqlx::query_as(
            "SELECT id AS key_id, name, prefix, created_at, last_used_at FROM api_keys
          WHERE org_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, id DESC",
        )
        .bind(org_id)
        .fetch_all(&self.pg)
        .await?)
    }

    /// Revokes a key (idempotently) and announces it to every proxy. `org` limits the key to one org; `None`
    /// (the operator) reaches any.
    ///
    /// A revocation is announced once: the call that revokes the key claims the announcement in the same statement
    /// (`announce_due_at`, a lease), announces, and clears the claim. Revoking an already revoked key writes nothing
    /// and announces nothing, so a stream of repeats cannot make the proxies re-resolve their keys, and concurrent
    /// revokes of one key announce once (the row lock orders them; the later ones find the claim taken). PostgreSQL is
    /// written first and this replica's cache forgets the key, so it is refused here at once; the announce then tells
    /// the proxies and the other control planes. If the announce fails the call fails with 503 and hands the claim
    /// back, so repeating it re-announces (and so does [`KeyService::announce_owed`], the sweep, if nobody repeats it).
    #[tracing::instrument(skip(self), fields(key.id = %key_id))]
    pub async fn revoke(&self, org: Option<&OrgId>, key_id: Uuid) -> Result<(), KeysError> {
        let org_id = match org {
            Some(org) => Some(self.org_id(org).await?),
            None => None,
        };
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
    .fetch_optional(&self.pg)
    .await?;
        let Some(row) = row else {
            return Err(KeysError::UnknownKey);
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
        self.announce(&claimed, &revocation).await.map_err(|e| {
            tracing::warn!(error = %e, "revocation stored but not announced");
            KeysError::NotAnnounced(e)
        })?;
        tracing::info!("api key revoked");
        Ok(())
    }

    /// Announces the revocations still owed (their announce failed and was not repeated, or the replica announcing
    /// them stopped), claiming them like [`KeyService::revoke`] does; returns how many were announced. Run by
    /// `jobs::caches`.
    pub async fn announce_owed(&self) -> Result<usize, KeysError> {
        let owed: Vec<Claimed> = sqlx::query_as(
            "UPDATE api_keys SET announce_due_at = now() + $1::interval
          WHERE id IN (SELECT id FROM api_keys WHERE announce_due_at <= now()
                        ORDER BY announce_due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id, key_hash, prefix, announce_due_at AS claim",
        )
        .bind(ANNOUNCE_LEASE)
        .bind(SWEEP_BATCH)
        .fetch_all(&self.pg)
        .await?;
        let mut announced = 0;
        let mut failure = None;
        for claimed in &owed {
            // Each one failing is handed back, so the others are tried now rather than after their lease.
            let outcome = match claimed.revocation() {
                Ok(revocation) => self
                    .announce(claimed, &revocation)
                    .await
                    .map_err(KeysError::NotAnnounced),
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
        &self,
        claimed: &Claimed,
        revocation: &keys::Revocation,
    ) -> redis::RedisResult<()> {
        // This replica refuses the key from now on; the others hear the announcement.
        self.cache.forget(revocation);
        let mut redis = self.redis.clone();
        let announced = keys::announce_revocation(&mut redis, &self.namespace, revocation).await;
        if announced.is_err() {
            self.dependency_errors.with_label_values(&["redis"]).inc();
        }
        // Only our own claim: one that expired and was taken again is the new holder's to release.
        let released = sqlx::query(
            "UPDATE api_keys SET announce_due_at = CASE WHEN $3 THEN NULL ELSE now() END
          WHERE id = $1 AND announce_due_at = $2",
        )
        .bind(claimed.id)
        .bind(claimed.claim)
        .bind(announced.is_ok())
        .execute(&self.pg)
        .await;
        if let Err(e) = released {
            // The lease runs out by itself: the revocation is then announced once more, or its retry waits for it.
            self.dependency_errors
                .with_label_values(&["postgres"])
                .inc();
            tracing::warn!(error = %e, key.id = %claimed.id, "cannot release the claim on a revocation's announcement");
        }
        announced.map(|_epoch| ())
    }
}
