//! A local stand-in for Clerk's JWKS endpoint, and session tokens minted with test-only keys.

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One of the two test signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    A,
    B,
}

impl TestKey {
    /// The `kid` the JWKS publishes it under.
    pub fn kid(self) -> &'static str {
        match self {
            Self::A => "test-key-a",
            Self::B => "test-key-b",
        }
    }

    fn file(self, suffix: &str) -> Vec<u8> {
        let path =
            crate::workspace_root().join(format!("tests/fixtures/clerk/{}{suffix}", self.kid()));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn jwk(self) -> Value {
        serde_json::from_slice(&self.file(".jwk.json")).expect("fixture JWK is JSON")
    }

    /// The public key in PEM, as an attacker would have it.
    pub fn public_pem(self) -> Vec<u8> {
        self.file(".pub.pem")
    }
}

struct JwksState {
    keys: Mutex<Vec<TestKey>>,
    fetches: AtomicUsize,
}

/// A JWKS endpoint on a loopback port whose key set a test can rotate; counts fetches.
#[derive(Clone)]
pub struct Jwks {
    state: Arc<JwksState>,
    /// `http://127.0.0.1:<port>/.well-known/jwks.json`.
    pub url: String,
}

impl Jwks {
    /// Serves `keys` until the test's runtime ends.
    pub async fn start(keys: &[TestKey]) -> Self {
        let state = Arc::new(JwksState {
            keys: Mutex::new(keys.to_vec()),
            fetches: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/.well-known/jwks.json", get(serve))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind JWKS server");
        let addr = listener.local_addr().expect("JWKS server address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            state,
            url: format!("http://{addr}/.well-known/jwks.json"),
        }
    }

    /// Publishes exactly `keys` from now on (a rotation).
    pub fn publish(&self, keys: &[TestKey]) {
        *self.state.keys.lock().expect("jwks lock") = keys.to_vec();
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

async fn serve(State(state): State<Arc<JwksState>>) -> Json<Value> {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let keys: Vec<Value> = state
        .keys
        .lock()
        .expect("jwks lock")
        .iter()
        .map(|k| k.jwk())
        .collect();
    Json(json!({ "keys": keys }))
}

/// The issuer tests configure (`CLERK_ISSUER`).
pub const ISSUER: &str = "https://clerk.tollgate.test";

fn now() -> i64 {
    use tollgate_common::clock::{Clock, SystemClock};
    SystemClock.now().timestamp()
}

/// Claims of a valid v1 session token for `user` in `org` (or no org) as an `org:admin`, valid from a minute ago
/// for ten minutes.
pub fn claims(user: &str, org: Option<&str>) -> Value {
    let mut c = json!({
        "sub": user, "iss": ISSUER, "sid": "sess_test", "azp": "http://localhost:3000",
        "iat": now() - 60, "nbf": now() - 60, "exp": now() + 600,
    });
    if let Some(org) = org {
        c["org_id"] = json!(org);
        c["org_role"] = json!("org:admin");
    }
    c
}

/// Claims of a valid v1 session token in `org` with the org role `role` as v1 spells it (`org:member`), or
/// none.
pub fn claims_with_role(user: &str, org: &str, role: Option<&str>) -> Value {
    let mut c = claims(user, Some(org));
    match role {
        Some(role) => c["org_role"] = json!(role),
        None => drop(c.as_object_mut().and_then(|c| c.remove("org_role"))),
    }
    c
}

/// Claims of a valid v2 session token as an admin: the org is in `o.id`.
pub fn claims_v2(user: &str, org: &str) -> Value {
    claims_v2_with_role(user, org, Some("admin"))
}

/// Claims of a valid v2 session token in `org` with `o.rol` as v2 spells it (`member`, without `org:`), or
/// none.
pub fn claims_v2_with_role(user: &str, org: &str, rol: Option<&str>) -> Value {
    let mut o = json!({ "id": org, "slg": "acme", "per": "read,manage", "fpm": "3" });
    if let Some(rol) = rol {
        o["rol"] = json!(rol);
    }
    json!({
        "sub": user, "iss": ISSUER, "v": 2, "sid": "sess_test",
        "iat": now() - 60, "nbf": now() - 60, "exp": now() + 600,
        "o": o,
    })
}

/// Signs `claims` with RS256 under `key`'s `kid`.
pub fn sign(key: TestKey, claims: &Value) -> String {
    sign_with_kid(key, key.kid(), claims)
}

/// Signs with `key` but announces `kid` in the header.
pub fn sign_with_kid(key: TestKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let encoding = EncodingKey::from_rsa_pem(&key.file(".pem")).expect("fixture key is an RSA PEM");
    jsonwebtoken::encode(&header, claims, &encoding).expect("sign test token")
}

/// The classic key-confusion forgery: HS256 keyed with the RSA public key.
pub fn forge_hs256_with_public_key(key: TestKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(&key.public_pem()),
    )
    .expect("sign forged token")
}

/// An unsigned token (`alg: none`).
pub fn forge_alg_none(key: TestKey, claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT", "kid": key.kid() });
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    format!("{}.{}.", enc(&header), enc(claims))
}
