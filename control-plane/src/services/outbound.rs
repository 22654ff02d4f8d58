//! Outgoing webhooks (CONTRACT §9): the orgs' endpoints and the delivery of usage alerts to them.
//!
//! * **Endpoints** (`endpoints.set`): one per org; setting it again replaces the URL and the events and issues a
//!   new signing secret (`whsec_…`, 24 random bytes), returned once and stored sealed (AES-256-GCM under
//!   `TOLLGATE_WEBHOOK_SECRETS_KEY`): it must be recoverable to sign, and the table alone does not give it away.
//! * **The URL is the client's**: refused (422 naming `url`) unless it is `http(s)`, without credentials, and
//!   every address its host resolves to (if it resolves yet) is public (`domain::net::is_public`) — unless
//!   `TOLLGATE_WEBHOOK_ALLOW_PRIVATE`. Checked again at every delivery: the client resolves the host once per
//!   delivery (no pooled connections) through a resolver that keeps only public addresses, an IP-literal host is
//!   checked as written, and the address actually connected to is checked before the answer counts. No redirects;
//!   the whole exchange is bounded by `TOLLGATE_WEBHOOK_TIMEOUT_MS` and at most [`MAX_RESPONSE`] bytes of the
//!   answer are read.
//! * **Deliveries** are a kind of job on the one queue (`webhook_delivery`, ordered per endpoint), queued by
//!   `tollgate_common::store::alerts` in the statement that records the alert. Signed per Standard Webhooks:
//!   `webhook-id` (the alert's message id, the same on every retry), `webhook-timestamp`, `webhook-signature`
//!   (`v1,` base64 HMAC-SHA256 of `id.timestamp.body` with the secret's bytes). A 2xx is delivered; anything else
//!   is retried with the queue's backoff, then dead (listed and replayable by the operator).

use crate::queue::{self, Queue};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::Serialize;
use sha2::Sha256;
use sqlx::PgPool;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tollgate_common::clock::SharedClock;
use tollgate_common::domain::OrgId;
use tollgate_common::domain::net::is_public;
use tollgate_common::store::alerts::EVENT_TYPES;
use utoipa::ToSchema;

/// Most bytes of an endpoint's answer that are read.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// The longest URL accepted.
pub const MAX_URL: usize = 2048;
/// Random bytes of a signing secret.
const SECRET_BYTES: usize = 24;
/// How long a claimed delivery stays invisible to other workers: longer than any delivery.
const LEASE: Duration = Duration::from_secs(120);
/// The longest wait between two attempts of a delivery.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// How long resolving an endpoint's host may take when it is set.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Outgoing webhook deliveries as a kind of job on the queue: ordered per endpoint.
pub static WEBHOOK_DELIVERIES: queue::Spec = queue::Spec {
    kind: "webhook_delivery",
    table: "webhook_deliveries",
    id: "id",
    key: "{a}.endpoint_id::text",
    same_key: "{h}.endpoint_id = {j}.endpoint_id",
    seq: "{a}.id",
    created: "{a}.created_at",
    returning: "id, endpoint_id, message_id, payload, attempts, lease_token",
};

/// Why an endpoint could not be set, or a delivery not be made.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// No such org.
    #[error("orgId: no such organization")]
    UnknownOrg,
    /// The request is invalid (422).
    #[error("{field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    /// `TOLLGATE_WEBHOOK_SECRETS_KEY` is not set (503).
    #[error("{0} is not set: outgoing webhooks are not configured")]
    NotConfigured(&'static str),
    /// A sealed secret could not be opened (the key changed).
    #[error("an endpoint's signing secret cannot be opened with TOLLGATE_WEBHOOK_SECRETS_KEY")]
    Sealed,
    /// PostgreSQL.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// `endpoints.set`'s reply.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSet {
    #[schema(example = "we_3kTq9x")]
    pub endpoint_id: String,
    /// The signing secret, shown this once: verify deliveries with it (any Standard Webhooks library).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// Seals and opens signing secrets.
struct Sealer(Aes256Gcm);

impl Sealer {
    fn new(key_b64: &str) -> Option<Self> {
        let key = BASE64.decode(key_b64.trim()).ok()?;
        (key.len() == 32).then(|| Self(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))))
    }

    /// nonce (12 bytes) || ciphertext.
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(self.0.encrypt(&nonce, plain).ok()?);
        Some(out)
    }

    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        self.0.decrypt(Nonce::from_slice(nonce), ciphertext).ok()
    }
}

/// A resolver that keeps only public addresses (unless private ones are allowed): the addresses a delivery may
/// connect to are decided here, once per connection, and every delivery makes its own connection.
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| allow || is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err("the endpoint's host resolves to no public address".into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The endpoints and their deliveries.
pub struct Outbound {
    pg: PgPool,
    sealer: Option<Sealer>,
    http: reqwest::Client,
    allow_private: bool,
    clock: SharedClock,
    queue: Queue,
    /// Woken when deliveries are queued on this replica.
    pub wake: Notify,
}

impl Outbound {
    /// The service under `settings`.
    pub fn new(
        pg: PgPool,
        settings: &crate::config::WebhookSettings,
        clock: SharedClock,
        queue: Queue,
    ) -> anyhow::Result<Arc<Self>> {
        use secrecy::ExposeSecret;
        let sealer = match &settings.secrets_key {
            Some(key) => Some(Sealer::new(key.expose_secret()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: not 32 bytes of base64",
                    crate::config::ENV_WEBHOOK_SECRETS_KEY
                )
            })?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(0)
            .user_agent("Tollgate-Webhooks/1")
            .dns_resolver(Arc::new(PublicOnly {
                allow_private: settings.allow_private,
            }))
            .build()?;
        Ok(Arc::new(Self {
            pg,
            sealer,
            http,
            allow_private: settings.allow_private,
            clock,
            queue,
            wake: Notify::new(),
        }))
    }

    /// Sets org `org`'s endpoint (replacing any) and returns its new signing secret (see the module docs).
    pub async fn set_endpoint(
        &self,
        org: &OrgId,
        url: &str,
        events: &[String],
    ) -> Result<EndpointSet, OutboundError> {
        let sealer = self.sealer.as_ref().ok_or(OutboundError::NotConfigured(
            crate::config::ENV_WEBHOOK_SECRETS_KEY,
        ))?;
        let events = check_events(events)?;
        let url = self.check_url(url).await?;
        let org_id = tollgate_common::store::orgs::id_by_clerk(&self.pg, org)
            .await?
            .ok_or(OutboundError::UnknownOrg)?;
        let mut key = [0u8; SECRET_BYTES];
        rand::rng().fill(&mut key[..]);
        let secret = format!("whsec_{}", BASE64.encode(key));
        let sealed = sealer.seal(&key).ok_or(OutboundError::Sealed)?;
        let public_id = format!(
            "we_{}",
            rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(20)
                .map(char::from)
                .collect::<String>()
        );
        sqlx::query(
            "INSERT INTO webhook_endpoints (public_id, org_id, url, events, secret_sealed)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (org_id) DO UPDATE
                SET public_id = EXCLUDED.public_id, url = EXCLUDED.url, events = EXCLUDED.events,
                    secret_sealed = EXCLUDED.secret_sealed, updated_at = now()",
        )
        .bind(&public_id)
        .bind(org_id)
        .bind(url.as_str())
        .bind(&events)
        .bind(&sealed)
        .execute(&self.pg)
        .await?;
        tracing::info!(org.id = %org, webhook.endpoint = %public_id, "webhook endpoint set");
        Ok(EndpointSet {
            endpoint_id: public_id,
            secret,
        })
    }

    /// The URL, if it is one we may call (see the module docs).
    async fn check_url(&self, raw: &str) -> Result<url::Url, OutboundError> {
        let invalid = |detail: &str| OutboundError::Invalid {
            field: "url",
            detail: detail.to_owned(),
        };
        if raw.len() > MAX_URL {
            return Err(invalid("must be at most 2048 characters"));
        }
        let url = url::Url::parse(raw).map_err(|_| invalid("must be an absolute http(s) URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("must be an http or https URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("must not carry credentials"));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<IpAddr> = match url.host() {
            None => return Err(invalid("must name a host")),
            Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            // A name that does not resolve now (DNS down, a record not published yet) is taken: every delivery
            // resolves it again and connects only to public addresses. One that resolves to a private one is not.
            Some(url::Host::Domain(name)) => {
                let found =
                    tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                        .await;
                match found {
                    Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                    _ => {
                        tracing::info!(
                            "a webhook endpoint's host does not resolve yet; each delivery resolves it again"
                        );
                        Vec::new()
                    }
                }
            }
        };
        if !self.allow_private && addrs.iter().any(|ip| !is_public(*ip)) {
            return Err(invalid(
                "must reach a public address: private, loopback and link-local addresses are refused",
            ));
        }
        Ok(url)
    }

    /// The worker's step: claims the next due delivery (the head of its endpoint's) and makes it. `Ok(None)` when
    /// none is due; `Ok(Some(delivered))` otherwise.
    pub async fn deliver_next(&self) -> Result<Option<bool>, OutboundError> {
        let job: Option<Job> = sqlx::query_as(&queue::claim_sql(&WEBHOOK_DELIVERIES))
            .bind(uuid::Uuid::new_v4())
            .bind(LEASE.as_secs_f64())
            .bind(None::<String>)
            .fetch_optional(&self.pg)
            .await?;
        let Some(job) = job else {
            return Ok(None);
        };
        let endpoint: (String, Vec<u8>) =
            sqlx::query_as("SELECT url, secret_sealed FROM webhook_endpoints WHERE id = $1")
                .bind(job.endpoint_id)
                .fetch_one(&self.pg)
                .await?;
        let outcome = self.send(&job, &endpoint.0, &endpoint.1).await;
        let delivered = outcome.is_ok();
        match outcome {
            Ok(status) => {
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'done', done_at = now(), attempts = attempts + 1,
                            last_error = NULL, response_status = $3, lease_token = NULL, lease_until = NULL
                      WHERE id = $1 AND lease_token = $2",
                )
                .bind(job.id)
                .bind(job.lease_token)
                .bind(i32::from(status))
                .execute(&self.pg)
                .await?;
                self.queue.metrics.attempt(&WEBHOOK_DELIVERIES, None);
            }
            Err((status, error)) => {
                let attempts = job.attempts + 1;
                let failure = queue::after_failure(
                    attempts,
                    &queue::Policy {
                        max_attempts: self.queue.max_attempts,
                        max_delay: MAX_RETRY_DELAY,
                    },
                );
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = $3, attempts = $4, last_error = $5,
                            response_status = $6, next_attempt_at = now() + make_interval(secs => $7),
                            lease_token = NULL, lease_until = NULL
                      WHERE id = $1 AND lease_token = $2",
                )
                .bind(job.id)
                .bind(job.lease_token)
                .bind(failure.status)
                .bind(attempts)
                .bind(error.chars().take(1000).collect::<String>())
                .bind(status.map(i32::from))
                .bind(failure.delay.as_secs_f64())
                .execute(&self.pg)
                .await?;
                self.queue
                    .metrics
                    .attempt(&WEBHOOK_DELIVERIES, Some(&failure));
                tracing::debug!(webhook.delivery = job.id, attempts, error = %error, "webhook delivery failed");
            }
        }
        Ok(Some(delivered))
    }

    /// One attempt: the endpoint's 2xx status, or (its status, why) on failure.
    async fn send(
        &self,
        job: &Job,
        url: &str,
        sealed: &[u8],
    ) -> Result<u16, (Option<u16>, String)> {
        let key = self
            .sealer
            .as_ref()
            .and_then(|s| s.open(sealed))
            .ok_or((None, OutboundError::Sealed.to_string()))?;
        let url = url::Url::parse(url)
            .map_err(|_| (None, "the endpoint's URL is unreadable".to_owned()))?;
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.allow_private
            && !is_public(ip)
        {
            return Err((
                None,
                "refused: the endpoint is a private address".to_owned(),
            ));
        }
        let body = serde_json::to_vec(&job.payload.0).map_err(|e| (None, e.to_string()))?;
        let timestamp = self.clock.now().timestamp();
        let signature = sign(&key, &job.message_id, timestamp, &body);
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &job.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| (None, describe(e)))?;
        if let Some(addr) = response.remote_addr()
            && !self.allow_private
            && !is_public(addr.ip())
        {
            return Err((None, "refused: connected to a private address".to_owned()));
        }
        let status = response.status().as_u16();
        drain(response).await;
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err((Some(status), format!("the endpoint answered {status}")))
        }
    }
}

/// Reads at most [`MAX_RESPONSE`] bytes of the answer and drops the rest.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < MAX_RESPONSE {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}

/// A transport error, without the URL (it is the client's, and may carry a token in its path or query).
fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirected (redirects are not followed)"
    } else {
        "the request failed"
    };
    format!("{what}: {}", e.without_url())
}

/// The Standard Webhooks signature of a message: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`
/// under the secret's bytes (standard-webhooks spec, "Signature scheme"; verified in the tests by the
/// `standardwebhooks` library from PyPI).
pub fn sign(key: &[u8], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("{message_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The events, checked: 1 to 2 distinct event types.
fn check_events(events: &[String]) -> Result<Vec<String>, OutboundError> {
    let invalid = |detail: String| OutboundError::Invalid {
        field: "events",
        detail,
    };
    if events.is_empty() {
        return Err(invalid(format!(
            "must name at least one of {}",
            EVENT_TYPES.join(", ")
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(invalid(format!("must be among {}", EVENT_TYPES.join(", "))));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct Job {
    id: i64,
    endpoint_id: i64,
    message_id: String,
    payload: sqlx::types::Json<serde_json::Value>,
    attempts: i32,
    lease_token: uuid::Uuid,
}

impl queue::Worker for Outbound {
    fn spec(&self) -> &'static queue::Spec {
        &WEBHOOK_DELIVERIES
    }

    async fn step(&self) -> Result<bool, String> {
        match self.deliver_next().await {
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }

    fn gauges(&self) -> (&PgPool, &queue::QueueMetrics) {
        (&self.pg, &self.queue.metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_standards_test_vector() {
        // The test vector of the standard-webhooks Rust library (libraries/rust/src/lib.rs, `test_sign`).
        let key = BASE64
            .decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .expect("key");
        assert_eq!(
            sign(
                &key,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key() {
        let a = Sealer::new(&BASE64.encode([7u8; 32])).expect("key");
        let b = Sealer::new(&BASE64.encode([8u8; 32])).expect("key");
        let sealed = a.seal(b"secret bytes").expect("seal");
        assert_eq!(a.open(&sealed).as_deref(), Some(&b"secret bytes"[..]));
        assert!(b.open(&sealed).is_none());
        assert!(Sealer::new("c2hvcnQ=").is_none(), "a short key is refused");
    }

    #[test]
    fn events_are_checked() {
        assert!(check_events(&[]).is_err());
        assert!(check_events(&["usage.other".to_owned()]).is_err());
        let twice = [
            "usage.bound.reached".to_owned(),
            "usage.bound.reached".to_owned(),
        ];
        assert_eq!(check_events(&twice).expect("ok"), ["usage.bound.reached"]);
    }
}
