//! The process-wide state every handler shares.

use crate::config::{Config, DEFAULT_STIGG_RETRY_MAX_MS};
use crate::error::ApiError;
use crate::limits::{LimitMetrics, Limits};
use crate::metrics::Metrics;
use crate::services::accounts::Accounts;
use crate::services::billing::{Billing, BillingMetrics};
use crate::services::keys::KeyService;
use crate::services::recorder::Recorder;
use crate::services::retention::{PurgeMetrics, Purger};
use crate::services::stigg::Stigg;
use crate::services::usage::Usage;
use crate::stigg::{StiggClient, StiggMetrics};
use crate::stripe::{StripeClient, StripeMetrics};
use anyhow::Context;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tollgate_common::clock::{SharedClock, SystemClock};
use tollgate_common::jwt::{ClerkSession, ClerkVerifier};
use tollgate_common::keys::cache::{KeyCache, SessionCache};
use tollgate_common::store::{pg, redis::RedisConn};

/// Shared state; cheap to clone through [`AppState`].
pub struct App {
    /// Settings, validated at start.
    pub config: Config,
    /// PostgreSQL.
    pub pg: PgPool,
    /// Redis.
    pub redis: RedisConn,
    /// Clerk session-token verification.
    pub clerk: ClerkVerifier,
    /// Metrics, registered in `registry`.
    pub metrics: Metrics,
    /// What `/metrics` exports.
    pub registry: prometheus::Registry,
    /// "Now", injectable for tests.
    pub clock: SharedClock,
    /// Billing, when Stripe is configured.
    pub billing: Option<Arc<Billing>>,
    /// The Stigg mirror (its outbox records operations as skipped when Stigg is not configured).
    pub stigg: Arc<Stigg>,
    /// Resolved API keys (kept in step with revocations by `jobs::caches`).
    pub keys: Arc<KeyCache>,
    /// Issuing, listing and revoking API keys, and announcing revocations.
    pub key_service: KeyService,
    /// Metering: entitlements, checks, seeding, records, history and resets.
    pub usage: Usage,
    /// Verified Clerk session tokens, until they expire.
    pub sessions: SessionCache<ClerkSession>,
    /// Orgs' billing state (kept in step with billing changes by `jobs::caches`; reloaded by billing after the
    /// changes it commits).
    pub accounts: Arc<Accounts>,
    /// Deletes finished rows past their retention (run by `jobs::purge`).
    pub purger: Arc<Purger>,
    /// Per-org rate limits of the endpoints that call Stripe or change keys.
    pub limits: Limits,
    /// Outgoing webhooks: the orgs' endpoints and the delivery of usage alerts.
    pub outbound: Arc<crate::services::outbound::Outbound>,
    /// Overage reported to Stripe's meters, when Stripe is configured.
    pub meter_reports: Option<Arc<crate::services::billing::meter_reports::MeterReporter>>,
}

/// The axum state type.
pub type AppState = Arc<App>;

/// The migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

impl App {
    /// Connects to the stores, applies pending migrations and builds the state.
    ///
    /// Migrations run under PostgreSQL advisory lock taken by sqlx's migrator, so replicas starting together
    /// apply each migration once and the others wait.
    pub async fn start(config: Config) -> anyhow::Result<AppState> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`App::start`] with an injected clock.
    pub async fn start_with_clock(config: Config, clock: SharedClock) -> anyhow::Result<AppState> {
        let pg = pg::pool(
            &config.common.database_url,
            config.common.database_max_connections,
        )
        .context("DATABASE_URL")?;
        MIGRATOR.run(&pg).await.context("applying migrations")?;
        let redis = RedisConn::connect(&config.common.redis)
            .await
            .context("REDIS_URL")?;
        let clerk =
            ClerkVerifier::new(config.common.clerk.clone()).context("building the JWKS client")?;
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).context("registering metrics")?;
        let keys = Arc::new(KeyCache::new(
            config.common.caches.key_capacity,
            metrics.keys.clone(),
        ));
        let key_service = KeyService::new(
            pg.clone(),
            redis.clone(),
            config.common.redis.namespace.clone(),
            Arc::clone(&keys),
            metrics.dependency_errors.clone(),
        );
        let accounts = Arc::new(Accounts::new(
            config.common.caches.org_capacity,
            metrics.accounts.clone(),
        ));
        let stripe_metrics = StripeMetrics::register(&registry).context("registering metrics")?;
        let billing_metrics = BillingMetrics::register(&registry).context("registering metrics")?;
        let stigg_metrics = StiggMetrics::register(&registry).context("registering metrics")?;
        let queue = crate::queue::Queue {
            metrics: crate::queue::QueueMetrics::register(
                &registry,
                &[
                    crate::services::billing::events::STRIPE_EVENTS.kind,
                    crate::services::stigg::STIGG_OPS.kind,
                    crate::services::outbound::WEBHOOK_DELIVERIES.kind,
                    crate::services::billing::meter_reports::METER_REPORTS.kind,
                ],
            )
            .context("registering metrics")?,
            max_attempts: config.queue_max_attempts,
        };
        let purge_metrics = PurgeMetrics::register(&registry).context("registering metrics")?;
        let limit_metrics = LimitMetrics::register(&registry).context("registering metrics")?;
        let stigg_client = config
            .stigg
            .as_ref()
            .map(|settings| StiggClient::new(settings, stigg_metrics.clone()))
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("STIGG_API_KEY")?;
        let stigg = Stigg::new(
            pg.clone(),
            Arc::clone(&config.common.plans),
            stigg_client,
            config
                .stigg
                .as_ref()
                .map_or(Duration::from_millis(DEFAULT_STIGG_RETRY_MAX_MS), |s| {
                    s.retry_max
                }),
            stigg_metrics,
            queue.clone(),
        );
        let billing = match &config.stripe {
            Some(settings) => {
                let client = StripeClient::new(&settings.api, stripe_metrics)
                    .map_err(anyhow::Error::msg)
                    .context("STRIPE_SECRET_KEY")?;
                Some(Arc::new(Billing::new(
                    pg.clone(),
                    client,
                    Arc::clone(&config.common.plans),
                    Arc::clone(&clock),
                    settings.clone(),
                    billing_metrics,
                    crate::services::billing::Followers {
                        stigg: Arc::clone(&stigg),
                        accounts: Arc::clone(&accounts),
                        queue: queue.clone(),
                    },
                )))
            }
            None => None,
        };
        let recorder = Recorder::start(
            pg.clone(),
            redis.clone(),
            config.common.redis.namespace.clone(),
            config.retention.usage_records + crate::services::retention::USAGE_MARGIN,
        );
        let usage = Usage::new(
            pg.clone(),
            redis.clone(),
            &config,
            Arc::clone(&clock),
            recorder,
            billing.as_ref().map(|b| b.overage_prices()),
        );
        let purger = Arc::new(Purger::new(
            pg.clone(),
            config.retention.clone(),
            Arc::clone(&clock),
            purge_metrics,
        ));
        let meter_reports = billing.as_ref().map(|billing| {
            crate::services::billing::meter_reports::MeterReporter::new(
                Arc::clone(billing),
                redis.clone(),
                &config.common.redis.namespace,
                &config.meters,
                queue.clone(),
            )
        });
        let outbound = crate::services::outbound::Outbound::new(
            pg.clone(),
            &config.webhooks,
            Arc::clone(&clock),
            queue.clone(),
        )
        .context("outgoing webhooks")?;
        let limits = Limits::new(
            redis.clone(),
            config.common.redis.namespace.clone(),
            config.rate_limits,
            limit_metrics,
        );
        Ok(Arc::new(Self {
            meter_reports,
            outbound,
            limits,
            pg,
            redis,
            clerk,
            metrics,
            registry,
            clock,
            billing,
            stigg,
            keys,
            key_service,
            usage,
            sessions: SessionCache::default(),
            accounts,
            purger,
            config,
        }))
    }
}

impl App {
    /// Billing, or 503 naming `STRIPE_SECRET_KEY` when Stripe is not configured.
    pub fn billing(&self) -> Result<&Billing, ApiError> {
        self.billing.as_deref().ok_or(ApiError::NotConfigured(
            crate::config::ENV_STRIPE_SECRET_KEY,
        ))
    }
}
