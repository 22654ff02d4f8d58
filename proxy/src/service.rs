//! The request path: one `ProxyHttp` implementation.
//!
//! `request_filter` runs four steps — check the request, price the route, identify the org, admit — and either lets
//! the request through or answers it with a [`Refusal`]. Admission takes units from the replica's lease on the
//! counter (no I/O), or else makes one Redis round trip that settles the lease and asks for a new block (see
//! [`crate::meter`]). Admitted requests go upstream unchanged except for the headers that carry Tollgate
//! credentials, which are removed, and `X-Tollgate-Org`, which is set. `response_filter` adds the `RateLimit-*`
//! headers. A request the upstream never answered gives its units back. `logging` records metrics and logs
//! failures at a level that says whose fault they were.

use crate::auth::{AuthFailure, Credential, Strip};
use crate::config::{FailurePolicy, UpstreamTimeouts};
use crate::core::Core;
use crate::meter::{Admitted, Slot};
use crate::metrics::{Decision, DecisionCounters};
use crate::respond::{self, Refusal};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pingora::http::{RequestHeader, ResponseHeader, StaticHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::Instant;
use tollgate_common::credential;
use tollgate_common::domain::{DenyEnvelope, Metric, Period, RouteClass, canonicalize};
use tollgate_common::jwt::JwtError;
use tollgate_common::keys::cache::{OrgRef, ResolveError};
use tollgate_common::store::counters::{self, CounterError};
use tollgate_common::store::redis::RedisConn;

/// The header that tells the upstream which org made the call (client-supplied values are replaced).
static ORG: StaticHeader = StaticHeader::new(credential::ORG_HEADER, "X-Tollgate-Org");
static RATELIMIT_LIMIT: StaticHeader = StaticHeader::new("ratelimit-limit", "RateLimit-Limit");
static RATELIMIT_REMAINING: StaticHeader =
    StaticHeader::new("ratelimit-remaining", "RateLimit-Remaining");
static RATELIMIT_RESET: StaticHeader = StaticHeader::new("ratelimit-reset", "RateLimit-Reset");

/// The metering proxy.
pub struct MeteringProxy {
    core: Arc<Core>,
    upstream: Upstream,
    redis: tokio::sync::OnceCell<RedisConn>,
}

/// Where admitted requests go. Pingora takes a fresh boxed peer per request; building one from these is cheaper
/// than cloning a configured one (whose options carry maps and optional parts).
pub struct Upstream {
    /// The resolved address.
    pub addr: std::net::SocketAddr,
    /// Whether to speak TLS to it.
    pub tls: bool,
    /// The TLS server name.
    pub sni: String,
    /// Connect, read and write timeouts.
    pub timeouts: UpstreamTimeouts,
}

impl Upstream {
    /// The peer for one request.
    pub fn peer(&self) -> HttpPeer {
        let mut peer = HttpPeer::new(self.addr, self.tls, self.sni.clone());
        let (options, timeouts) = (&mut peer.options, self.timeouts);
        options.connection_timeout = Some(timeouts.connect);
        options.total_connection_timeout = Some(timeouts.total_connect);
        options.read_timeout = Some(timeouts.read);
        options.write_timeout = Some(timeouts.write);
        peer
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    metered: bool,
    strip: Strip,
    org: Option<Arc<OrgRef>>,
    rate: Option<RateInfo>,
    /// Units taken for this request, so they can be given back if the upstream never answers.
    charge: Option<Charge>,
    /// Whether the upstream sent a response header.
    upstream_answered: bool,
}

/// What the `RateLimit-*` headers say.
#[derive(Clone, Copy)]
struct RateInfo {
    limit: u64,
    remaining: u64,
    reset: u64,
}

/// Units admitted from a slot's lease in one epoch.
struct Charge {
    slot: Arc<Slot>,
    cost: u64,
    epoch: i64,
}

impl MeteringProxy {
    /// A proxy sending admitted requests to `upstream`.
    pub fn new(core: Arc<Core>, upstream: Upstream) -> Self {
        Self {
            core,
            upstream,
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

    /// Step 1 to 4 of a request; `Ok` lets it through, and says the target to forward when it is not the one
    /// received.
    async fn admit(&self, req: &RequestHeader, ctx: &mut Ctx) -> Result<Option<String>, Refusal> {
        check_request(req)?;
        let options = req.method == http::Method::OPTIONS;
        let target = canonicalize(options, req.raw_path()).map_err(Refusal::BadTarget)?;
        let class = self.core.routes.classify(target.path());
        ctx.metered = matches!(class, RouteClass::Metered { .. });
        let org = self.identify(req, ctx).await?;
        if let RouteClass::Metered { metric, cost, .. } = class {
            self.meter(ctx, &org, metric, cost).await?;
        }
        Ok(target.into_rewritten())
    }

    /// Step 3: the org behind the request's Tollgate credential, and which headers to strip.
    async fn identify(&self, req: &RequestHeader, ctx: &mut Ctx) -> Result<Arc<OrgRef>, Refusal> {
        let core = &*self.core;
        let start = ctx.start;
        let identified = async {
            let selected = crate::auth::select(&req.headers, |t| core.clerk.claims_our_issuer(t))?;
            let org = match selected.credential {
                Credential::ApiKey(key) => match core.keys.resolve(&core.pg, key, start).await {
                    Ok(key) => Arc::clone(&key.org),
                    Err(ResolveError::Unknown) => return Err(AuthFailure::BadKey),
                    Err(ResolveError::Database(e)) => {
                        tracing::warn!(error = %e, "cannot resolve an API key: PostgreSQL unavailable");
                        return Err(AuthFailure::Unavailable);
                    }
                },
                Credential::Session(token) => self.session(token).await?,
            };
            Ok::<_, AuthFailure>((org, selected.strip))
        };
        match identified.await {
            Ok((org, strip)) => {
                ctx.strip = strip;
                ctx.org = Some(Arc::clone(&org));
                Ok(org)
            }
            Err(failure) => {
                core.metrics
                    .auth_failures
                    .with_label_values(&[failure.label()])
                    .inc();
                Err(Refusal::Auth(failure))
            }
        }
    }

    /// The org of a Clerk session token, from the session cache or by verifying it.
    async fn session(&self, token: &str) -> Result<Arc<OrgRef>, AuthFailure> {
        let core = &*self.core;
        let now_secs = core.clock.now().timestamp();
        core.sessions
            .get_or_verify(token, now_secs, || async {
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
                Ok((Arc::new(OrgRef::new(id, org)), session.expires_at))
            })
            .await
    }

    /// Step 4: admit `cost` units of `metric` from the org's counter of the current period.
    async fn meter(
        &self,
        ctx: &mut Ctx,
        org: &OrgRef,
        metric: &Metric,
        cost: u64,
    ) -> Result<(), Refusal> {
        let core = &*self.core;
        let decisions = core.metrics.decisions(metric);
        let entry = core.orgs.get(&core.pg, org.id, &org.org).await.map_err(|e| {
            core.metrics.postgres_errors.inc();
            tracing::warn!(error = %e, org.id = %org.org, "cannot load billing state: PostgreSQL unavailable");
            Refusal::BillingUnavailable
        })?;
        let now = core.clock.now();
        let terms = entry
            .terms(core.catalog, now)
            .ok_or(Refusal::SubscriptionRequired)?;
        let period = terms.period;
        // Read before the bound is derived: a state applied meanwhile moves it, and the next request derives again.
        let generation = entry.generation();
        let slot = entry.ext.slot(&core.meter, entry.id, metric, &period);

        let now_ms = now.timestamp_millis();
        // The common case: the replica's lease covers the request, and was granted under this billing state (so
        // under this bound). No I/O, no plan look-up.
        if let Some(admitted) = slot.take_local(cost, generation, now_ms) {
            self.admitted(ctx, decisions, &slot, cost, admitted, &period, now);
            return Ok(());
        }
        let probing = core.redis_health.is_down();
        if core.redis_health.skip(now_ms) {
            return self.without_quota(decisions);
        }
        // One round trip per slot at a time: a replica's reports must not overtake each other. Whoever waited
        // here may find the lease refilled by the request before it.
        let _turn = slot.in_flight.lock().await;
        if let Some(admitted) = slot.take_local(cost, generation, now_ms) {
            self.admitted(ctx, decisions, &slot, cost, admitted, &period, now);
            return Ok(());
        }
        let bound = entry.bound(&terms, metric);
        let limit = bound.units();
        // The round trip this request waited behind may have just found Redis gone: unless this request is the
        // outage's probe, do not queue up behind it.
        if !probing && core.redis_health.is_down() {
            return self.without_quota(decisions);
        }
        let (report, want) = slot.begin_lease(cost);
        let started = Instant::now();
        let outcome = match self.redis().await {
            Ok(mut conn) => {
                counters::lease(
                    &mut conn,
                    &core.pg,
                    &slot.counter,
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
                return self.without_quota(decisions);
            }
        };
        core.redis_health.succeeded();
        core.meter.mark_dirty(&slot, now);
        match slot.finish_lease(&reply, report, cost, (limit, generation), now_ms) {
            Some(admitted) => {
                self.admitted(ctx, decisions, &slot, cost, admitted, &period, now);
                Ok(())
            }
            None => {
                if let Some(d) = decisions {
                    d.inc(Decision::Over);
                }
                Err(Refusal::QuotaExceeded(
                    DenyEnvelope::new(
                        metric.clone(),
                        limit,
                        reply.used + reply.leased,
                        &period,
                        now,
                    )
                    .at_spend_cap(bound.is_budget()),
                ))
            }
        }
    }

    /// Records an admission: the decision metric, the charge (for a refund), and what the `RateLimit-*` headers
    /// will say.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one admission, kept apart to stay on the stack"
    )]
    fn admitted(
        &self,
        ctx: &mut Ctx,
        decisions: Option<&DecisionCounters>,
        slot: &Arc<Slot>,
        cost: u64,
        admitted: Admitted,
        period: &Period,
        now: DateTime<Utc>,
    ) {
        self.core.meter.mark_dirty(slot, now);
        self.core.meter.list(slot);
        let (left, limit) = (admitted.left, admitted.limit);
        if let Some(d) = decisions {
            d.inc(if left.saturating_mul(10) < limit {
                Decision::Near
            } else {
                Decision::Within
            });
        }
        ctx.charge = Some(Charge {
            slot: Arc::clone(slot),
            cost,
            epoch: admitted.epoch,
        });
        // Overage without a ceiling or a spend cap has no bound for the RateLimit headers to describe.
        ctx.rate = (limit != u64::MAX).then(|| RateInfo {
            limit,
            remaining: left.min(limit),
            reset: period.seconds_until_end(now),
        });
    }

    /// Redis could not answer: admit unmetered or refuse, as configured.
    fn without_quota(&self, decisions: Option<&DecisionCounters>) -> Result<(), Refusal> {
        match self.core.config.failure_policy {
            FailurePolicy::FailOpen => {
                if let Some(d) = decisions {
                    d.inc(Decision::FailedOpen);
                }
                Ok(())
            }
            FailurePolicy::FailClosed => {
                if let Some(d) = decisions {
                    d.inc(Decision::FailedClosed);
                }
                Err(Refusal::QuotaUnavailable)
            }
        }
    }
}

/// Step 1: what RFC 9112 §3.2 makes a server refuse. An HTTP/1.1 request needs exactly one `Host` line; HTTP/1.0
/// may omit it.
fn check_request(req: &RequestHeader) -> Result<(), Refusal> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version == http::Version::HTTP_11 => {
            Err(Refusal::BadRequest("Host: required in an HTTP/1.1 request"))
        }
        (Some(_), Some(_)) => Err(Refusal::BadRequest("Host: sent more than once")),
        (Some(host), None) if host.is_empty() && req.uri.authority().is_none() => {
            Err(Refusal::BadRequest("Host: must not be empty"))
        }
        _ => Ok(()),
    }
}

/// Removes every header that spells one of Tollgate's own names another way (`X_Tollgate_Org`, `x_api_key`): a
/// CGI-style upstream would read it as ours. One pass over the names; nothing allocated unless one is found.
fn strip_aliases(req: &mut RequestHeader) {
    let aliases: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|name| credential::is_alias_of_ours(name.as_str()))
        .cloned()
        .collect();
    for name in aliases {
        req.remove_header(&name);
    }
}

/// Whether an upstream failure means the upstream could not have done the work: it was never reached, or it never
/// answered. Such requests are not charged.
fn unanswered(e: &Error, upstream_answered: bool) -> bool {
    *e.esource() == ErrorSource::Upstream && !upstream_answered
}

#[async_trait]
impl ProxyHttp for MeteringProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            metered: false,
            strip: Strip::default(),
            org: None,
            rate: None,
            charge: None,
            upstream_answered: false,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // Pingora times single reads; this bounds each read of the request body.
        session.set_read_timeout(Some(self.core.config.downstream_read_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match self.admit(session.req_header(), ctx).await {
            Ok(None) => Ok(false),
            Ok(Some(target)) => {
                // The upstream gets the target that was priced. Canonical targets are ASCII origin-form paths,
                // which the request header always takes.
                session.req_header_mut().set_raw_path(target.as_bytes())?;
                Ok(false)
            }
            Err(refusal) => {
                respond::refuse(session, &refusal).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.upstream.peer()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.strip.authorization {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        if ctx.strip.api_key {
            upstream.remove_header(&tollgate_common::credential::API_KEY);
        }
        strip_aliases(upstream);
        // Inserting replaces every client-sent value.
        match &ctx.org {
            Some(org) => upstream.insert_static_header(&ORG, org.header.clone())?,
            None => drop(upstream.remove_header(ORG.name())),
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_answered = true;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(rate) = ctx.rate {
            response.insert_static_header(&RATELIMIT_LIMIT, rate.limit.into())?;
            response.insert_static_header(&RATELIMIT_REMAINING, rate.remaining.into())?;
            response.insert_static_header(&RATELIMIT_RESET, rate.reset.into())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if unanswered(e, ctx.upstream_answered)
            && let Some(charge) = ctx.charge.take()
            && charge.slot.refund(charge.cost, charge.epoch)
        {
            self.core.meter.list(&charge.slot);
            self.core.metrics.refunds.inc();
        }
        let refusal = match e.etype() {
            ErrorType::HTTPStatus(code) => match code {
                400 => Some(Refusal::BadRequest("the request could not be read")),
                _ => Some(Refusal::Internal),
            },
            _ => match e.esource() {
                ErrorSource::Upstream => Some(match e.etype() {
                    ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => Refusal::GatewayTimeout,
                    _ => Refusal::BadGateway,
                }),
                ErrorSource::Downstream => match e.etype() {
                    // The client is gone: nothing to write to.
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Refusal::BadRequest("the request could not be read")),
                },
                ErrorSource::Internal | ErrorSource::Unset => Some(Refusal::Internal),
            },
        };
        let code = match &refusal {
            Some(refusal) => {
                if let Err(e) = respond::refuse(session, refusal).await {
                    tracing::debug!(error = %e, "could not send the error response");
                }
                refusal.status()
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Failures are logged in [`Self::logging`], at a level that says whose fault they were.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let metrics = &self.core.metrics;
        metrics.request(ctx.metered, status);
        metrics.duration[usize::from(ctx.metered)].observe(ctx.start.elapsed().as_secs_f64());
        if let Some(e) = e {
            let route = if ctx.metered { "metered" } else { "unmetered" };
            match e.esource() {
                // The client's doing (a reset, a malformed request, a slow body): not ours to page on.
                ErrorSource::Downstream => {
                    tracing::debug!(error = %e, http.status = status, route.class = route, "client error");
                }
                ErrorSource::Upstream => {
                    tracing::warn!(error = %e, http.status = status, route.class = route, "upstream failed");
                }
                ErrorSource::Internal | ErrorSource::Unset => {
                    tracing::error!(error = %e, http.status = status, route.class = route, "proxying failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: http::Version, hosts: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/v1/x", None).unwrap();
        req.set_version(version);
        for h in hosts {
            req.append_header("host", *h).unwrap();
        }
        req
    }

    fn wire(write: impl FnOnce(&mut bytes::BytesMut)) -> String {
        let mut buf = bytes::BytesMut::new();
        write(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn static_headers_replace_client_values_and_keep_their_case() {
        let mut req = request(http::Version::HTTP_11, &["api.example"]);
        req.append_header("x-tollgate-org", "org_forged").unwrap();
        req.insert_static_header(&ORG, http::HeaderValue::from_static("org_real"))
            .unwrap();
        let sent = wire(|b| req.header_to_h1_wire(b));
        assert!(sent.contains("X-Tollgate-Org: org_real\r\n"), "{sent}");
        assert!(!sent.contains("org_forged"), "{sent}");

        let mut resp = ResponseHeader::build(200, Some(1)).unwrap();
        resp.append_header("Content-Type", "text/plain").unwrap();
        for (name, value) in [
            (&RATELIMIT_LIMIT, 100u64),
            (&RATELIMIT_REMAINING, 99),
            (&RATELIMIT_RESET, 3600),
        ] {
            resp.insert_static_header(name, value.into()).unwrap();
        }
        let written = wire(|b| resp.header_to_h1_wire(b));
        assert_eq!(
            written,
            "Content-Type: text/plain\r\nRateLimit-Limit: 100\r\nRateLimit-Remaining: 99\r\nRateLimit-Reset: 3600\r\n"
        );
        assert_eq!(resp.headers["ratelimit-remaining"], "99");
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert!(check_request(&request(http::Version::HTTP_11, &["api.example"])).is_ok());
        assert!(check_request(&request(http::Version::HTTP_10, &[])).is_ok());
        assert!(matches!(
            check_request(&request(http::Version::HTTP_11, &[])),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            check_request(&request(http::Version::HTTP_11, &["a", "b"])),
            Err(Refusal::BadRequest(_))
        ));
    }
}
