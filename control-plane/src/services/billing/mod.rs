//! Billing with Stripe as the source of truth (CONTRACT §6, §8): customers, trials, payment methods, webhooks,
//! plan changes, invoices and the portal.
//!
//! # Layout
//!
//! * [`customers`] — 1.2 `customer.ensure`.
//! * [`subscriptions`] — 1.3 `subscription.create`, and [`Billing::sync_subscription`]: read a subscription back from
//!   Stripe and mirror it, the one path by which the `subscriptions` table changes.
//! * [`payments`] — 2.1 SetupIntents, 2.2 the default payment method, 6.2 the portal.
//! * [`plans`] — 5.1 preview, 5.2 upgrade now, 5.3 downgrade at period end.
//! * [`invoices`] — 6.1.
//! * [`events`] — 2.3 intake, 2.4 processing (the worker and the endpoint), 8.1 replay.
//! * [`claims`] — the per-org "billing change in progress" claim every change runs under.
//!
//! Everything here takes a [`Billing`] — its own dependencies, not the whole app — and returns [`BillingError`],
//! so the webhook worker runs the same code as the handlers. `error.rs` maps [`BillingError`] to problem+json once.
//!
//! # No connection or lock across a Stripe call
//!
//! Stripe may take its whole budget to answer (or not answer). Nothing here holds a pooled PostgreSQL connection, a
//! transaction, a row lock or an advisory lock while it waits, so a slow Stripe, or one org's flood of billing
//! calls, cannot take the connections that every other org's metering needs. Every change has the same shape:
//!
//! 1. **Claim** the org ([`claims`]): a row taken and committed in one short statement; a second concurrent change
//!    of the org gets 409 at once instead of queueing. The claim expires a little after
//!    `TOLLGATE_BILLING_CHANGE_TIMEOUT_MS`, the longest a change may run, so a replica that dies holding it does not
//!    wedge the org.
//! 2. **Read** what is stored with short queries (the connection goes back to the pool at once).
//! 3. **Call Stripe**, with no connection held.
//! 4. **Write the mirror** in one short transaction: the subscription read back from Stripe (ordered by its read
//!    ticket, `store::subscriptions::newer_read`, so a stale read never overwrites a newer one) and its Stigg
//!    operations in the same transaction — Stripe → database → Stigg.
//! 5. **Release** the claim.
//!
//! A Stripe call that fails writes nothing. If the holder dies between Stripe and the database (a crash, the change
//! timing out, the client gone), Stripe has changed and the database not: the webhook Stripe sends for the change
//! is processed by the worker, which reads the object back from Stripe and mirrors it, so the database converges
//! without anyone retrying; retrying the call is safe too (idempotency keys replay Stripe's first answer).

pub mod claims;
pub mod customers;
pub mod events;
pub mod invoices;
pub mod meter_reports;
pub mod overage;
pub mod payments;
pub mod plans;
pub mod subscriptions;

use crate::config::StripeSettings;
use crate::services::batch::Batcher;
use crate::stripe::{Op, StripeClient, StripeError};
use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, Opts, Registry};
use sqlx::{PgExecutor, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tollgate_common::clock::SharedClock;
use tollgate_common::domain::{IgnoreReason, OrgId, Plan, PlanCatalog, PlanCode, PriceRef};

/// How long resolved prices are kept before they are read from Stripe again.
const PRICE_TTL: Duration = Duration::from_secs(600);

/// Why a billing operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// A required setting is missing: billing is off.
    #[error("{0} is not set: billing is not configured")]
    NotConfigured(&'static str),
    /// No such org.
    #[error("orgId: no such organization; create it with /api/orgs.create")]
    UnknownOrg,
    /// The request is invalid (422).
    #[error("{field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    /// The request conflicts with the billing state (409).
    #[error("{field}: {detail}")]
    Conflict { field: &'static str, detail: String },
    /// Another billing change of the org holds its claim (409, at once).
    #[error(
        "orgId: a billing change for this organization is in progress; retry when it has finished"
    )]
    ChangeInProgress,
    /// The change did not finish within `TOLLGATE_BILLING_CHANGE_TIMEOUT_MS` (503). It may have been made in
    /// Stripe; the webhook it causes brings the database in step.
    #[error(
        "the billing change did not finish in time; Stripe may have made it, and the mirror follows Stripe's webhook"
    )]
    TooSlow,
    /// The thing named does not exist (404).
    #[error("{field}: {detail}")]
    NotFound { field: &'static str, detail: String },
    /// A webhook that is not from Stripe, or not an event (400).
    #[error("{field}: {detail}")]
    BadWebhook { field: &'static str, detail: String },
    /// Stripe refused, failed or could not be read.
    #[error(transparent)]
    Stripe(#[from] StripeError),
    /// Stripe's state cannot be mirrored (a price PLANS_CONFIG does not know, two live subscriptions).
    #[error("{0}")]
    Unmirrorable(String),
    /// What Stripe holds is not Tollgate's to mirror, and never will be by retrying: a customer no org owns, a
    /// price PLANS_CONFIG does not name. The webhook worker ends such an event `ignored` with this reason.
    #[error("{detail}")]
    NotOurs {
        /// Why (a closed set: a metric label and a stored column).
        reason: IgnoreReason,
        /// What, naming the objects.
        detail: String,
    },
    /// PostgreSQL.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl BillingError {
    fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            detail: detail.into(),
        }
    }

    fn conflict(field: &'static str, detail: impl Into<String>) -> Self {
        Self::Conflict {
            field,
            detail: detail.into(),
        }
    }
}

/// The billing metrics.
#[derive(Clone)]
pub struct BillingMetrics {
    /// `tollgate_cp_webhook_events_total{outcome}`: intake (`received`, `duplicate`, `rejected`) and processing
    /// (`applied`, `ignored`, `failed`).
    pub events: IntCounterVec,
    /// `tollgate_cp_billing_claims_total{outcome}`: `taken`, `taken_over` (an expired claim: its holder died or
    /// hung), `busy` (409).
    pub claims: IntCounterVec,
    /// `tollgate_cp_webhook_ignored_total{reason}`: events ended `ignored`, by [`IgnoreReason`].
    pub ignored: IntCounterVec,
}

impl BillingMetrics {
    /// The outcomes of `tollgate_cp_webhook_events_total`.
    pub const OUTCOMES: [&'static str; 6] = [
        "received",
        "duplicate",
        "rejected",
        "applied",
        "ignored",
        "failed",
    ];

    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            events: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_webhook_events_total",
                    "Stripe webhook events by outcome: intake (received, duplicate, rejected) and processing \
                     (applied, ignored, failed).",
                ),
                &["outcome"],
            )?,
            claims: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_billing_claims_total",
                    "Per-org billing-change claims: taken, taken_over (an expired one), busy (answered 409).",
                ),
                &["outcome"],
            )?,
            ignored: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_webhook_ignored_total",
                    "Stripe events ended ignored (terminal, never retried), by reason: unhandled_type, \
                     foreign_customer, unknown_price, object_deleted, no_subscription.",
                ),
                &["reason"],
            )?,
        };
        for outcome in Self::OUTCOMES {
            m.events.with_label_values(&[outcome]);
        }
        for outcome in claims::OUTCOMES {
            m.claims.with_label_values(&[outcome]);
        }
        for reason in IgnoreReason::ALL {
            m.ignored.with_label_values(&[reason.as_str()]);
        }
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.claims.clone()))?;
        registry.register(Box::new(m.ignored.clone()))?;
        Ok(m)
    }
}

/// A PLANS_CONFIG plan's Stripe price, as Stripe states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceInfo {
    /// `price_…`.
    pub id: String,
    /// Monthly amount in minor units.
    pub amount: i64,
    /// Lower-case ISO currency.
    pub currency: String,
}

/// What billing shares with the rest of the control plane: what it keeps in step with the changes it commits, and
/// the queue its events are a kind of job on.
pub struct Followers {
    /// The Stigg mirror, whose outbox billing writes to.
    pub stigg: Arc<crate::services::stigg::Stigg>,
    /// This process's billing cache, reloaded right after each subscription change.
    pub accounts: Arc<crate::services::accounts::Accounts>,
    /// The queue's metrics and retry limit.
    pub queue: crate::queue::Queue,
}

/// Everything billing needs.
pub struct Billing {
    pg: PgPool,
    stripe: Arc<StripeClient>,
    /// The overage prices, shared with usage (entitlements' overage cost).
    overage: Arc<overage::OveragePrices>,
    catalog: Arc<PlanCatalog>,
    clock: SharedClock,
    settings: StripeSettings,
    prices: RwLock<Option<(Instant, HashMap<PlanCode, PriceInfo>)>>,
    /// Woken by intake so a local worker picks an event up at once.
    pub wake: Notify,
    /// The queue's metrics (Stripe events are one of its kinds).
    queue: crate::queue::QueueMetrics,
    /// Failed attempts after which an event is dead (`TOLLGATE_QUEUE_MAX_ATTEMPTS`).
    max_attempts: i32,
    /// Intake's group commit.
    intake: Batcher<events::Intake>,
    /// The Stigg mirror, whose outbox billing writes to.
    stigg: Arc<crate::services::stigg::Stigg>,
    /// Metrics.
    pub metrics: BillingMetrics,
    /// The billing cache of this process, reloaded right after each subscription change billing commits (the
    /// other replicas hear PostgreSQL's announcement), so no handler or job touches it.
    accounts: Arc<crate::services::accounts::Accounts>,
}

impl Billing {
    /// Billing over `stripe`. Starts intake's writers on the current runtime.
    pub fn new(
        pg: PgPool,
        stripe: StripeClient,
        catalog: Arc<PlanCatalog>,
        clock: SharedClock,
        settings: StripeSettings,
        metrics: BillingMetrics,
        followers: Followers,
    ) -> Self {
        let Followers {
            stigg,
            accounts,
            queue,
        } = followers;
        let intake = Batcher::start(
            events::Intake { pg: pg.clone() },
            events::INTAKE_WRITERS,
            events::INTAKE_BATCH,
        );
        let stripe = Arc::new(stripe);
        let overage = Arc::new(overage::OveragePrices::new(
            Arc::clone(&stripe),
            Arc::clone(&catalog),
        ));
        Self {
            pg,
            stripe,
            overage,
            catalog,
            clock,
            settings,
            intake,
            prices: RwLock::new(None),
            wake: Notify::new(),
            queue: queue.metrics,
            max_attempts: queue.max_attempts,
            stigg,
            metrics,
            accounts,
        }
    }

    /// Reloads org `org_id` in this process's billing cache after a subscription change committed (read-your-
    /// writes on this replica). A failure is logged, not returned: the change is committed, and the announcement
    /// and the safety net still bring the cache in step.
    pub(crate) async fn committed(&self, org_id: i64) {
        if let Err(e) = self.accounts.reload(&self.pg, &[org_id]).await {
            tracing::warn!(error = %e, "cannot reload the billing cache after a change; the announcement will");
        }
    }

    /// The overage prices (usage reads them for entitlements' overage cost).
    pub fn overage_prices(&self) -> Arc<overage::OveragePrices> {
        Arc::clone(&self.overage)
    }

    /// The settings billing runs with.
    pub fn settings(&self) -> &StripeSettings {
        &self.settings
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The prices of every paid plan, from Stripe (cached for [`PRICE_TTL`]).
    async fn prices(&self) -> Result<HashMap<PlanCode, PriceInfo>, BillingError> {
        if let Some((at, prices)) = self
            .prices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            && at.elapsed() < PRICE_TTL
        {
            return Ok(prices.clone());
        }
        let mut resolved = HashMap::new();
        let lookup_keys: Vec<String> = self
            .catalog
            .plans()
            .filter_map(|p| match &p.price {
                Some(PriceRef::LookupKey(k)) => Some(k.clone()),
                _ => None,
            })
            .collect();
        let by_key = overage::active_prices_by_lookup_key(&self.stripe, lookup_keys).await?;
        for plan in self.catalog.plans() {
            let price = match &plan.price {
                None => continue,
                Some(PriceRef::LookupKey(key)) => by_key.get(key).cloned(),
                Some(PriceRef::PriceId(id)) => {
                    let request = stripe_product::price::RetrievePrice::new(id.as_str());
                    self.stripe.retrieve(Op::PriceRetrieve, &request).await?
                }
            };
            let Some(price) = price else {
                return Err(BillingError::Unmirrorable(format!(
                    "plans.{}.price: `{}` is not an active Stripe price",
                    plan.code,
                    plan.price.as_ref().map_or("", PriceRef::as_str)
                )));
            };
            resolved.insert(
                plan.code.clone(),
                PriceInfo {
                    id: price.id.as_str().to_owned(),
                    amount: price.unit_amount.unwrap_or(0),
                    currency: price.currency.to_string().to_ascii_lowercase(),
                },
            );
        }
        *self
            .prices
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), resolved.clone()));
        Ok(resolved)
    }

    /// The price of a paid plan.
    async fn price_of(&self, plan: &PlanCode) -> Result<PriceInfo, BillingError> {
        self.prices()
            .await?
            .remove(plan)
            .ok_or_else(|| BillingError::Unmirrorable(format!("plans.{plan}: has no Stripe price")))
    }

    /// A paid plan named by a request's `field`: 422 for unknown codes and for `trial`.
    fn paid_plan(&self, field: &'static str, code: &str) -> Result<&Plan, BillingError> {
        let plan = PlanCode::parse(code)
            .ok()
            .and_then(|code| self.catalog.plan(&code))
            .ok_or_else(|| {
                BillingError::invalid(field, format!("`{code}` is not a plan of PLANS_CONFIG"))
            })?;
        if plan.price.is_none() {
            return Err(BillingError::invalid(
                field,
                "the trial plan cannot be subscribed to; it applies while trialing",
            ));
        }
        Ok(plan)
    }
}

/// An org as billing sees it.
#[derive(Debug, Clone)]
struct OrgBilling {
    id: i64,
    customer: Option<String>,
}

impl OrgBilling {
    /// The Stripe customer, or 409 naming `orgId`.
    fn customer(&self) -> Result<&str, BillingError> {
        self.customer.as_deref().ok_or_else(|| {
            BillingError::conflict(
                "orgId",
                "this organization has no Stripe customer yet; call /api/stripe/customer.ensure first",
            )
        })
    }
}

/// Loads the org: one short query.
async fn org(pg: impl PgExecutor<'_>, org: &OrgId) -> Result<OrgBilling, BillingError> {
    let identity = tollgate_common::store::orgs::identity_by_clerk(pg, org)
        .await?
        .ok_or(BillingError::UnknownOrg)?;
    Ok(OrgBilling {
        id: identity.id,
        customer: identity.stripe_customer,
    })
}

/// A Unix timestamp from Stripe as an instant.
fn instant(ts: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(ts, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}
