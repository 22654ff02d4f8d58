//! The stored answers of `Idempotency-Key` requests (`idempotency_keys`; see `crate::idempotency` for the protocol).
//!
//! Every statement is one short statement on its own: nothing is held while the request runs.

use sqlx::PgPool;
use uuid::Uuid;

/// How long a key's answer is kept and replayed (Stripe's 24 h).
pub const RETENTION_HOURS: i64 = 24;

/// How long a request may hold its key before a retry may take it over (a replica that died mid-request). A
/// request that is dropped frees its key at once; this only bounds a crash.
pub const LEASE_SECONDS: i64 = 300;

/// A stored final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// HTTP status.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// What [`begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key is ours (new, expired, or left by a request that died): run the request, then [`finish`] or
    /// [`free`] with this token.
    Run(Uuid),
    /// The first request with this key finished: its answer.
    Replay(Stored),
    /// The key was used with another request (method, path or body).
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
}

/// Takes `key` of `scope` for a request with `fingerprint`, or says what holds it.
pub async fn begin(
    pg: &PgPool,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Begin, sqlx::Error> {
    // A concurrent `free` can delete the row between the two statements: look again (bounded).
    for _ in 0..3 {
        let token = Uuid::new_v4();
        let taken: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, token, lease_until)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
             ON CONFLICT (scope, key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token, status = NULL,
                    content_type = NULL, body = NULL, lease_until = EXCLUDED.lease_until, created_at = now()
              WHERE idempotency_keys.created_at < now() - make_interval(hours => $6)
                 OR (idempotency_keys.status IS NULL AND idempotency_keys.lease_until < now()
                     AND idempotency_keys.fingerprint = EXCLUDED.fingerprint)
             RETURNING token",
        )
        .bind(scope)
        .bind(key)
        .bind(fingerprint)
        .bind(token)
        .bind(LEASE_SECONDS as f64)
        .bind(RETENTION_HOURS as i32)
        .fetch_optional(pg)
        .await?;
        if let Some(token) = taken {
            return Ok(Begin::Run(token));
        }
        type Row = (Vec<u8>, Option<i16>, Option<String>, Option<Vec<u8>>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT fingerprint, status, content_type, body FROM idempotency_keys
              WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(pg)
        .await?;
        let Some((stored_fingerprint, status, content_type, body)) = row else {
            continue;
        };
        if stored_fingerprint != fingerprint {
            return Ok(Begin::Mismatch);
        }
        return Ok(match (status, body) {
            (Some(status), Some(body)) => Begin::Replay(Stored {
                status: u16::try_from(status).unwrap_or(500),
                content_type,
                body,
            }),
            _ => Begin::InProgress,
        });
    }
    Ok(Begin::InProgress)
}

/// Stores the final answer of the request holding `token`.
pub async fn finish(
    pg: &PgPool,
    scope: &str,
    key: &str,
    token: Uuid,
    answer: &Stored,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $4, content_type = $5, body = $6
          WHERE scope = $1 AND key = $2 AND token = $3",
    )
    .bind(scope)
    .bind(key)
    .bind(token)
    .bind(i16::try_from(answer.status).unwrap_or(500))
    .bind(answer.content_type.as_deref())
    .bind(&answer.body)
    .execute(pg)
    .await?;
    Ok(())
}

/// Frees the key held by `token`: its request ended without a final answer.
pub async fn free(pg: &PgPool, scope: &str, key: &str, token: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND token = $3")
        .bind(scope)
        .bind(key)
        .bind(token)
        .execute(pg)
        .await?;
    Ok(())
}
