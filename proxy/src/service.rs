//! The request path: one `ProxyHttp` implementation.
//!
//! `request_filter` identifies the org, prices the route and admits the request from the replica's lease on the
//! counter (no I/O), or else makes one Redis round trip that settles the lease and asks for a new block (see
//! [`crate::meter`]); on a denial it writes the 429 envelope and ends the exchange. Admitted requests go upstream unchanged except
//! for the consumer's credential, which is removed, and `X-Tollgate-Org`, which is set. `response_filter` adds the
//! `RateLimit-*` headers; `logging` records metrics and nothing else.

use crate::auth::{self, AuthFailure, Credential, CredentialHeader, OrgRef};
use crate::config::FailurePolicy;
use crate::core::Core;
use crate::metrics::{Decision, DecisionCounters};
use crate::respond;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::Instant;
use tollgate_common::domain::{DenyEnvelope, Period, RouteClass, Terms};
use tollgate_common::jwt::JwtError;
use tollgate_common::store::counters::{self, CounterError};
use tollgate_common::store::redis::RedisConn;

/// The header that tells the upstream which org made the call (client-supplied values are replaced).
pub const ORG_HEADER: &str = "x-tollgate-org";

/// The metering proxy.
pub struct MeteringProxy {
    core: Arc<Core>,
    peer: HttpPeer,
    redis: tokio::sync::OnceCell<RedisConn>,
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    metered: bool,
    credential: Option<CredentialHeader>,
    org: Option<Arc<OrgRef>>,
    rate: Option<RateInfo>,
}

/// What the `RateLimit-*` headers say.
#[derive(Clone, Copy)]
struct RateInfo {
    limit: u64,
    remaining: u64,
    reset: u64,
}

impl MeteringProxy {
    /// A proxy sending admitted requests to `peer`.
    pub fn new(core: Arc<Core>, peer: HttpPeer) -> Self {
        Self {
            core,
            peer,
            redis: tokio::sync::OnceCell::new(),
        }
    }

    /// The hot-path Redis connection, created on first use inside the proxy's own runtime so its I/O driver runs
    /// beside the requests that use it.
    async fn redis(&self) -> Result<RedisConn, CounterError> {
        let conn = self
            .redis
            .get_or_try_init(|| RedisConn::connect(&self.core.config.common.redis))
            .await?;
        Ok(conn.clone())
    }

    async fn identify(
        &self,
        req: &RequestHeader,
    ) -> Result<(Arc<OrgRef>, CredentialHeader), AuthFailure> {
        let core = &self.core;
        match auth::credential(&req.headers)? {
            Credential::ApiKey { key, header } => {
                Ok((core.keys.resolve(&core.pg, key).await?, header))
            }
            Credential::Session(token) => {
                let token_hash = tollgate_common::keys::hash(token);
                let now_secs = core.clock.now().timestamp();
                if let Some(org) = core.sessions.get(&token_hash, now_secs) {
                    return Ok((org, CredentialHeader::Authorization));
                }
                let session = core.clerk.verify(token).await.map_err(|e| match e {
                    JwtError::KeysUnavailable => AuthFailure::Unavailable,
                    _ => AuthFailure::BadToken,
                })?;
                let org = session.org.ok_or(AuthFailure::NoOrg)?;
                let id = core
                    .orgs
                    .id_of(&core.pg, &org)
                    .await
                    .map_err(|_| AuthFailure::Unavailable)?
                    .ok_or(AuthFailure::UnknownOrg)?;
                let org = Arc::new(OrgRef { id, org });
                core.sessions
                    .insert(token_hash, Arc::clone(&org), session.expires_at);
                Ok((org, CredentialHeader::Authorization))
            }
        }
    }

    /// Records an admission: the decision metric and what the `RateLimit-*` headers will say.
    fn admitted(
        &self,
        ctx: &mut Ctx,
        decisions: Option<&DecisionCounters>,
        limit: u64,
        left: u64,
        period: &Period,
        now: DateTime<Utc>,
    ) {
        if let Some(d) = decisions {
            d.inc(if left.saturating_mul(10) < limit {
                Decision::Near
            } else {
                Decision::Within
            });
        }
        ctx.rate = Some(RateInfo {
            limit,
            remaining: left.min(limit),
            reset: period.seconds_until_end(now),
        });
    }

    /// Redis could not answer: admit unmetered or refuse, as configured.
    async fn without_quota(
        &self,
        session: &mut Session,
        decisions: Option<&DecisionCounters>,
    ) -> Result<bool> {
        match self.core.config.failure_policy {
            FailurePolicy::FailOpen => {
                if let Some(d) = decisions {
                    d.inc(Decision::FailedOpen);
                }
                Ok(false)
            }
            FailurePolicy::FailClosed => {
                if let Some(d) = decisions {
                    d.inc(Decision::FailedClosed);
                }
                respond::problem(
                    session,
                    503,
                    "/problems/quota-unavailable",
                    "Quota unavailable",
                    "quota cannot be checked right now; retry later",
                )
                .await?;
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for MeteringProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            metered: false,
            credential: None,
            org: None,
            rate: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let core = &*self.core;
        let (org, credential) = match self.identify(session.req_header()).await {
            Ok(found) => found,
            Err(failure) => {
                core.metrics
                    .auth_failures
                    .with_label_values(&[failure.label()])
                    .inc();
                let (status, detail) = failure.response();
                let (kind, title) = match status {
                    401 => ("/problems/unauthenticated", "Unauthenticated"),
                    403 => ("/problems/forbidden", "Forbidden"),
                    _ => ("/problems/unavailable", "Service unavailable"),
                };
                respond::problem(session, status, kind, title, detail).await?;
                return Ok(true);
            }
        };
        ctx.credential = Some(credential);
        ctx.org = Some(Arc::clone(&org));
        let RouteClass::Metered { metric, cost, .. } =
            core.routes.classify(session.req_header().uri.path())
        else {
            return Ok(false);
        };
        ctx.metered = true;
        let decisions = core.metrics.decisions(metric);

        let entry = match core.orgs.get(&core.pg, org.id, &org.org).await {
            Ok(entry) => entry,
            Err(e) => {
                core.metrics.postgres_errors.inc();
                tracing::warn!(error = %e, org.id = %org.org, "cannot load billing state: PostgreSQL unavailable");
                respond::problem(
                    session,
                    503,
                    "/problems/unavailable",
                    "Service unavailable",
                    "billing state cannot be loaded right now; retry later",
                )
                .await?;
                return Ok(true);
            }
        };
        let now = core.clock.now();
        let Some(Terms { plan, period }) = entry.terms(core.catalog, now) else {
            respond::problem(
                session,
                402,
                "/problems/subscription-required",
                "Subscription required",
                "this organization has no subscription; start one to use metered endpoints",
            )
            .await?;
            return Ok(true);
        };
        let limit = plan.limit(metric);
        let slot = entry.slot(&core.meter, metric, &period);

        let now_ms = now.timestamp_millis();
        // The common case: the replica's lease covers the request. No I/O.
        if let Some(left) = slot.take_local(cost, now_ms) {
            slot.mark_dirty(now);
            self.admitted(ctx, decisions, limit, left, &period, now);
            return Ok(false);
        }
        let probing = core.redis_health.is_down();
        if core.redis_health.skip(now_ms) {
            return self.without_quota(session, decisions).await;
        }
        // One round trip per slot at a time: a replica's reports must not overtake each other. Whoever waited
        // here may find the lease refilled by the request before it.
        let _turn = slot.in_flight.lock().await;
        if let Some(left) = slot.take_local(cost, now_ms) {
            slot.mark_dirty(now);
            self.admitted(ctx, decisions, limit, left, &period, now);
            return Ok(false);
        }
        // The round trip this request waited behind may have just found Redis gone: unless this request is the
        // outage's probe, do not queue up behind it.
        if !probing && core.redis_health.is_down() {
            return self.without_quota(session, decisions).await;
        }
        let (report, want) = slot.begin_lease(cost);
        let started = Instant::now();
        let outcome = match self.redis().await {
            Ok(mut conn) => {
                counters::lease(
                    &mut conn,
                    &core.pg,
                    &slot.redis_key,
                    &slot.key,
                    &core.replica,
                    report,
                    cost,
                    want,
                    limit,
                )
                .await
            }
            Err(e) => Err(e),
        };
        core.metrics
            .redis_latency
            .observe(started.elapsed().as_secs_f64());
        let reply = match outcome {
            Ok(reply) => reply,
            Err(e) => {
                if let CounterError::Postgres(e) = &e {
                    // The counter was missing from Redis and its durable copy cannot be read: usage is unknown.
                    core.metrics.postgres_errors.inc();
                    tracing::warn!(error = %e, "cannot rebuild a counter: PostgreSQL unavailable");
                } else {
                    core.metrics.redis_errors.inc();
                    core.redis_health
                        .failed(now_ms, core.config.failure_policy.label(), &e);
                }
                return self.without_quota(session, decisions).await;
            }
        };
        core.redis_health.succeeded();
        slot.mark_dirty(now);
        match slot.finish_lease(&reply, report, cost, limit, now_ms) {
            Some(left) => {
                self.admitted(ctx, decisions, limit, left, &period, now);
                Ok(false)
            }
            None => {
                if let Some(d) = decisions {
                    d.inc(Decision::Over);
                }
                let envelope = DenyEnvelope::new(
                    metric.clone(),
                    limit,
                    reply.used + reply.leased,
                    &period,
                    now,
                );
                respond::quota_exceeded(session, &envelope).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match ctx.credential {
            Some(CredentialHeader::Authorization) => {
                upstream.remove_header(&http::header::AUTHORIZATION);
            }
            Some(CredentialHeader::XApiKey) => {
                upstream.remove_header("x-api-key");
            }
            None => {}
        }
        upstream.remove_header(ORG_HEADER);
        if let Some(org) = &ctx.org {
            upstream.insert_header(ORG_HEADER, org.org.as_str())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(rate) = ctx.rate {
            response.insert_header("ratelimit-limit", rate.limit)?;
            response.insert_header("ratelimit-remaining", rate.remaining)?;
            response.insert_header("ratelimit-reset", rate.reset)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let (kind, title, detail) = match code {
                502 => (
                    "/problems/bad-gateway",
                    "Bad gateway",
                    "the upstream API could not be reached",
                ),
                400 => (
                    "/problems/bad-request",
                    "Bad request",
                    "the request could not be read",
                ),
                _ => (
                    "/problems/internal",
                    "Internal error",
                    "the request could not be proxied",
                ),
            };
            if let Err(e) = respond::problem(session, code, kind, title, detail).await {
                tracing::debug!(error = %e, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let metrics = &self.core.metrics;
        metrics.request(ctx.metered, status);
        metrics.duration[usize::from(ctx.metered)].observe(ctx.start.elapsed().as_secs_f64());
    }
}
