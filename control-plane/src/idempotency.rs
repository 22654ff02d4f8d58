//! `Idempotency-Key` on every control-plane POST, Stripe's way (<https://docs.stripe.com/api/idempotent_requests>).
//!
//! One middleware ([`layer`]) on the API routes, so no handler repeats it:
//!
//! * **Without the header** each call is a new intent: the request gets a fresh [`Intent`] and runs.
//! * **With it** (1–255 printable ASCII characters, else 400 naming `Idempotency-Key`), the key is scoped to the
//!   caller (the operator, a user in an org, an API key: two callers' equal keys never meet) and the request is
//!   fingerprinted (method, path, raw body). The first request takes the key (`services::idempotency::begin`, one
//!   statement) and runs; the same key with the same request replays its stored answer (status and body, with
//!   `Idempotent-Replayed: true`) for 24 h; with another request it is 409; while the first still runs, 409
//!   `idempotency_key_in_use` (Stripe's answer to concurrent requests with one key).
//! * **Answers that carry a secret shown once** (`keys.create`, `webhooks/endpoints.set`, marked [`ShownOnce`]) are
//!   never stored: the key is freed, so a retry runs again and issues a new secret (revoke the one never seen).
//! * **Only final answers are stored**: 2xx and deterministic 4xx. An answer that may differ on retry — any 5xx
//!   (Stripe down: 502/503), 401/403, 408, 429, a 409 "in progress" (marked by [`ApiError`] with [`NotFinal`]) —
//!   frees the key, and so does a request that is dropped (the client went away), so an error is never replayed as
//!   if it were the result.
//!
//! The request's [`Intent`] (in its extensions; handlers take it as an extractor) is what Stripe idempotency keys
//! derive from (`stripe::IdempotencyKey::for_intent`): a retry of the same intent reaches Stripe with the same keys,
//! a new intent with new ones. A caller that is not authenticated, or a route without a principal (the Stripe
//! webhook, which is idempotent on `event.id`), runs without a stored answer.

use crate::app::AppState;
use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::extract::{BodyRules, read_body};
use crate::services::idempotency::{self as store, Begin, Stored};
use crate::stripe::Intent;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::convert::Infallible;
use uuid::Uuid;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// The largest stored answer body; a larger one is not stored (the key is freed).
const MAX_STORED_BODY: usize = 1 << 20;
/// The route that is idempotent by its own id (`event.id`) and has no principal.
const WEBHOOK_PATH: &str = "/api/webhooks/stripe.receive";

/// Marks a response whose status says nothing final about the request (set by [`ApiError`]): it is not stored.
#[derive(Debug, Clone, Copy)]
pub struct NotFinal;

/// Marks a response that carries a secret shown once (a webhook signing secret): it is never stored, so a retry
/// with the same key runs again (and issues a new secret) rather than replaying the secret from the database.
#[derive(Debug, Clone, Copy)]
pub struct ShownOnce;

/// A header value, checked: 1 to 255 printable ASCII characters (Stripe's limit is 255).
pub fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bytes = value.as_bytes();
    let ok = (1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    let invalid = || ApiError::BadRequest {
        field: "Idempotency-Key",
        detail: "must be 1 to 255 printable ASCII characters".to_owned(),
    };
    if !ok {
        return Err(invalid());
    }
    value.to_str().map(str::to_owned).map_err(|_| invalid())
}

/// Whose keys these are: two principals never share a key.
pub fn scope_of(principal: &Principal) -> String {
    match principal {
        Principal::Operator => "operator".to_owned(),
        Principal::User(session) => format!(
            "user:{}:{}",
            session.user_id,
            session.org.as_ref().map_or("", |o| o.as_str())
        ),
        Principal::ApiKey(key) => format!("key:{}", key.key_id),
    }
}

/// The request's fingerprint: method, path and raw body.
fn fingerprint(method: &Method, path: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    for part in [method.as_str().as_bytes(), path.as_bytes(), body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().to_vec()
}

/// Whether an answer is final, so replayed to a repeated key.
fn is_final(response: &Response) -> bool {
    let status = response.status();
    (status.is_success() || status.is_client_error())
        && response.extensions().get::<NotFinal>().is_none()
        && response.extensions().get::<ShownOnce>().is_none()
}

/// The middleware (see the module documentation).
pub async fn layer(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.method() != Method::POST || req.uri().path() == WEBHOOK_PATH {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(HEADER) else {
        req.extensions_mut().insert(Intent::fresh());
        return next.run(req).await;
    };
    let key = match parse_key(raw) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let Ok(principal) = auth::authenticate(req.headers(), &app).await else {
        // The handler refuses it (401) and counts it.
        req.extensions_mut().insert(Intent::fresh());
        return next.run(req).await;
    };
    let scope = scope_of(&principal);
    let rules = req
        .extensions()
        .get::<BodyRules>()
        .copied()
        .unwrap_or_default();
    let (mut parts, body) = req.into_parts();
    let mut reading = Request::new(body);
    *reading.headers_mut() = parts.headers.clone();
    let bytes = match read_body(reading, rules).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let print = fingerprint(&parts.method, parts.uri.path(), &bytes);
    let token = match store::begin(&app.pg, &scope, &key, &print).await {
        Ok(Begin::Run(token)) => token,
        Ok(Begin::Replay(stored)) => return replay(stored),
        Ok(Begin::Mismatch) => {
            return ApiError::Conflict {
                field: "Idempotency-Key",
                detail: "this key was used with another request (method, path or body); use a new key for a \
                         new request"
                    .to_owned(),
            }
            .into_response();
        }
        Ok(Begin::InProgress) => {
            return ApiError::InProgress {
                field: "Idempotency-Key",
                detail: "idempotency_key_in_use: a request with this key is still running; retry when it has \
                         finished"
                    .to_owned(),
            }
            .into_response();
        }
        Err(e) => return ApiError::Database(e).into_response(),
    };
    parts.extensions.insert(Intent::keyed(&scope, &key));
    parts.extensions.insert(principal);
    let guard = Held {
        pg: app.pg.clone(),
        scope,
        key,
        token,
        armed: true,
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    guard.settle(response).await
}

/// The key held by a running request: freed if the request is dropped before it settles.
struct Held {
    pg: PgPool,
    scope: String,
    key: String,
    token: Uuid,
    armed: bool,
}

impl Held {
    /// Stores a final answer, or frees the key; returns the answer.
    async fn settle(mut self, response: Response) -> Response {
        self.armed = false;
        if !is_final(&response) {
            self.free().await;
            return response;
        }
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_STORED_BODY).await {
            Ok(bytes) => bytes,
            Err(_) => {
                self.free().await;
                return ApiError::Internal(anyhow::anyhow!("an answer could not be buffered"))
                    .into_response();
            }
        };
        let stored = Stored {
            status: parts.status.as_u16(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: bytes.to_vec(),
        };
        if let Err(e) = store::finish(&self.pg, &self.scope, &self.key, self.token, &stored).await {
            tracing::warn!(error = %e, "an idempotent answer could not be stored; the key is freed");
            self.free().await;
        }
        Response::from_parts(parts, Body::from(bytes))
    }

    async fn free(&self) {
        if let Err(e) = store::free(&self.pg, &self.scope, &self.key, self.token).await {
            tracing::warn!(error = %e, "an idempotency key could not be freed; it frees itself when its lease ends");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (pg, scope, key, token) = (
            self.pg.clone(),
            std::mem::take(&mut self.scope),
            std::mem::take(&mut self.key),
            self.token,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store::free(&pg, &scope, &key, token).await {
                    tracing::warn!(error = %e, "an idempotency key could not be freed");
                }
            });
        }
    }
}

/// A stored answer, replayed.
fn replay(stored: Stored) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    if let Some(ct) = stored
        .content_type
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
    {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// The request's intent: the caller's `Idempotency-Key`, or a fresh one.
impl<S: Send + Sync> FromRequestParts<S> for Intent {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<Intent>()
            .cloned()
            .unwrap_or_else(Intent::fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        for good in ["a", "7f6e-41c2", &"k".repeat(255), "a b~!"] {
            assert!(
                parse_key(&HeaderValue::from_str(good).unwrap()).is_ok(),
                "{good}"
            );
        }
        let too_long = "k".repeat(256);
        for bad in [
            HeaderValue::from_static(""),
            HeaderValue::from_str(&too_long).unwrap(),
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
            HeaderValue::from_bytes(b"a\tb").unwrap(),
        ] {
            let e = parse_key(&bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    ApiError::BadRequest {
                        field: "Idempotency-Key",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }

    #[test]
    fn fingerprints_separate_method_path_and_body() {
        let a = fingerprint(&Method::POST, "/api/x", b"{}");
        assert_eq!(a, fingerprint(&Method::POST, "/api/x", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/api/y", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/api/x", b"{ }"));
        assert_ne!(
            fingerprint(&Method::POST, "/api/x", b"a"),
            fingerprint(&Method::POST, "/api/xa", b"")
        );
    }

    #[test]
    fn only_final_answers_are_kept() {
        let answer = |status: u16, not_final: bool| {
            let mut r = StatusCode::from_u16(status).unwrap().into_response();
            if not_final {
                r.extensions_mut().insert(NotFinal);
            }
            is_final(&r)
        };
        assert!(answer(200, false));
        assert!(answer(422, false));
        assert!(answer(409, false), "already on this plan: deterministic");
        assert!(!answer(409, true), "another change in progress");
        assert!(!answer(502, false));
        assert!(!answer(503, false));
        assert!(!answer(500, false));
    }
}
