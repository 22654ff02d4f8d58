//! 1.3 `subscription.create`, and mirroring a subscription from Stripe — the one path by which the
//! `subscriptions` table changes (the webhook worker, 2.4, and every plan change use it): read back from Stripe
//! with no connection held (`Billing::read_subscription`), then written in one short transaction
//! (`Billing::write_read`), ordered by read tickets so a stale read never overwrites a newer one.

use super::{Billing, BillingError, instant, org};
use crate::config::TrialEndWithoutCard;
use crate::stripe::{IdempotencyKey, Intent, Op};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::HashMap;
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems,
    CreateSubscriptionPaymentBehavior, CreateSubscriptionTrialSettings,
    CreateSubscriptionTrialSettingsEndBehavior,
    CreateSubscriptionTrialSettingsEndBehaviorMissingPaymentMethod as MissingPaymentMethod,
    ListSubscription, ListSubscriptionStatus, ResumeSubscription, RetrieveSubscription,
    UpdateSubscription,
};
use stripe_billing::subscription_schedule::RetrieveSubscriptionSchedule;
use tollgate_common::domain::subscription::{self, StripePrice, StripeSubscription};
use tollgate_common::domain::{
    DomainError, IgnoreReason, OrgId, Period, PriceRef, SubscriptionState, SubscriptionStatus,
};
use tollgate_common::store::orgs;
use tollgate_common::store::subscriptions::{self as store, Upserted};

/// 1.3's answer.
#[derive(Debug, Clone)]
pub struct Created {
    /// `sub_…`.
    pub subscription_id: String,
    /// Stripe's status (`trialing` for a new one).
    pub status: SubscriptionStatus,
    /// When the trial ends.
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// The payment of its open first (or resumption) invoice needs the customer — 3-D Secure, or another card
    /// after a decline: that invoice's confirmation secret (a PaymentIntent's client secret), for Stripe.js.
    pub client_secret: Option<String>,
}

impl From<&SubscriptionState> for Created {
    fn from(s: &SubscriptionState) -> Self {
        Self {
            subscription_id: s.id.clone(),
            status: s.status,
            trial_ends_at: s.trial_end,
            client_secret: None,
        }
    }
}

/// What `latest_invoice.confirmation_secret` expands to on a subscription Stripe returned.
const CONFIRMATION_SECRET: &str = "latest_invoice.confirmation_secret";

/// The client secret of `subscription`'s latest invoice while it is open (retrieved or returned with
/// [`CONFIRMATION_SECRET`] expanded): what the customer confirms with Stripe.js.
/// The item that bills the plan: the first licensed one. A subscription's other items are the metered overage
/// items billed beside it (CONTRACT §9), which never decide the plan.
pub(super) fn plan_item(
    items: &[stripe_shared::SubscriptionItem],
) -> Option<&stripe_shared::SubscriptionItem> {
    items.iter().find(|item| {
        item.price
            .recurring
            .as_ref()
            .is_none_or(|r| r.usage_type != stripe_shared::RecurringUsageType::Metered)
    })
}

fn open_invoice_secret(subscription: &stripe_shared::Subscription) -> Option<String> {
    subscription
        .latest_invoice
        .as_ref()
        .and_then(|invoice| invoice.as_object())
        .filter(|invoice| invoice.status == Some(stripe_shared::InvoiceStatus::Open))
        .and_then(|invoice| invoice.confirmation_secret.as_ref())
        .map(|secret| secret.client_secret.clone())
}

/// What [`Billing::sync_subscription`] did.
#[derive(Debug, Clone)]
pub struct Synced {
    /// The state now stored.
    pub state: SubscriptionState,
    /// Whether the row changed.
    pub changed: bool,
    /// The org's internal id.
    pub org_id: i64,
}

/// What was read back from Stripe about one subscription, ready to be written by [`Billing::write_read`]: its
/// state and, when it holds the org's slot, the state of every other subscription our mirror still lets hold it.
/// Each read carries the ticket taken before it (`store::subscriptions::newer_read`).
pub(super) struct SubscriptionRead {
    ticket: i64,
    state: SubscriptionState,
    /// `metadata.orgId`, which links a customer no org has yet.
    org_hint: Option<String>,
    others: Vec<(i64, SubscriptionState)>,
    /// The subscription's metered items as Stripe has them: (`si_…`, `price_…`).
    metered: Vec<(String, String)>,
}

impl Billing {
    /// Starts the org's trial on the plan whose price is `price_lookup` (a `price` of PLANS_CONFIG), or returns the
    /// live subscription it already has. A billing change: under the org's claim, no connection held across Stripe.
    ///
    /// Never two subscriptions holding the org's slot, and one trial per org (README, "Subscribing again"):
    ///
    /// * `trialing`, `active`, `past_due` (live): returned as it is.
    /// * `incomplete`: returned as it is, with its open first invoice's `client_secret` (the customer confirms it
    ///   with Stripe.js); setting a payment method (2.2) pays that invoice too.
    /// * `paused` (a trial that ended without a card): resumed (`POST /v1/subscriptions/{id}/resume`, a new period
    ///   from now, invoiced and charged; unpaid, `past_due` with the invoice's `client_secret`) — 409 naming
    ///   `orgId` until the org has a payment method.
    /// * `unpaid` (Stripe gave up retrying): canceled, then a new subscription without a trial, charged at once —
    ///   409 until the org has a payment method.
    /// * none: a new subscription, with a trial only if the org never had one.
    ///
    /// A subscription without a trial is created with `payment_behavior=allow_incomplete`: paid at once it is
    /// `active`; a payment that needs 3-D Secure, or a declined card, leaves it `incomplete` with its first
    /// invoice open, and the answer carries that invoice's `client_secret`. Unpaid for 23 h, Stripe makes it
    /// `incomplete_expired` (final), and subscribing again makes a new one (still without a trial).
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn create_subscription(
        &self,
        org_id: &OrgId,
        price_lookup: &str,
        intent: &Intent,
    ) -> Result<Created, BillingError> {
        let plan = self
            .catalog
            .plans()
            .find(|p| {
                p.price
                    .as_ref()
                    .is_some_and(|price| price.as_str() == price_lookup)
            })
            .ok_or_else(|| {
                BillingError::invalid(
                    "priceLookup",
                    format!("`{price_lookup}` is not the price of a plan in PLANS_CONFIG"),
                )
            })?;
        let price = self.price_of(&plan.code).await?;
        // One metered item per overage price of the plan, beside its price (CONTRACT §9).
        let overage = self.overage_items(&plan.code).await?;
        let org = org(&self.pg, org_id).await?;
        let customer = org.customer()?.to_owned();
        if let Some(live) = self.live_subscription(org.id).await? {
            return Ok(Created::from(&live));
        }
        self.changing(&org, "subscription.create", async {
            // Read again under the claim: a change that just ended may have made one.
            if let Some(live) = self.live_subscription(org.id).await? {
                return Ok(Created::from(&live));
            }
            let ticket = store::read_ticket(&self.pg).await?;
            // Stripe may hold one we have not mirrored yet (its webhook is on the way), or one made outside
            // Tollgate: Stripe's list is what decides.
            let all = self
                .stripe
                .send(
                    Op::SubscriptionList,
                    &ListSubscription::new()
                        .customer(customer.as_str())
                        .status(ListSubscriptionStatus::All)
                        .limit(100),
                    None,
                )
                .await?
                .data;
            let trial_spent =
                all.iter().any(|s| s.trial_start.is_some()) || self.trial_granted(org.id).await?;
            let holding = all.into_iter().find(|s| {
                SubscriptionStatus::parse(s.status.as_str())
                    .is_ok_and(SubscriptionStatus::holds_the_slot)
            });
            let status = holding
                .as_ref()
                .and_then(|s| SubscriptionStatus::parse(s.status.as_str()).ok());
            let needs_card = match status {
                Some(SubscriptionStatus::Paused | SubscriptionStatus::Unpaid) => true,
                None => trial_spent,
                Some(_) => false,
            };
            let card = self.default_payment_method(org.id).await?;
            if needs_card && card.is_none() {
                return Err(BillingError::conflict(
                    "orgId",
                    "this organization's trial is over and it has no payment method; set one with \
                     /api/payments/default-method.set, then subscribe again",
                ));
            }
            let subscription = match (holding, status) {
                (Some(s), Some(SubscriptionStatus::Paused)) => {
                    let key =
                        IdempotencyKey::for_intent(intent, Op::SubscriptionResume, s.id.as_str());
                    // Resume has no payment_behavior: an unpaid resumption invoice (3-D Secure, a decline) leaves
                    // the subscription `past_due`, and its secret goes back to the caller.
                    let resumed = self
                        .stripe
                        .send(
                            Op::SubscriptionResume,
                            &ResumeSubscription::new(s.id.as_str())
                                .expand(vec![CONFIRMATION_SECRET.to_owned()]),
                            Some(&key),
                        )
                        .await?;
                    tracing::info!(
                        subscription.status = resumed.status.as_str(),
                        "paused subscription resumed"
                    );
                    resumed
                }
                (Some(s), Some(SubscriptionStatus::Unpaid)) => {
                    // Stripe gave up on it: end it, then subscribe anew (never two holding the slot).
                    self.stripe
                        .send(
                            Op::SubscriptionCancel,
                            &CancelSubscription::new(s.id.as_str()),
                            Some(&IdempotencyKey::for_intent(
                                intent,
                                Op::SubscriptionCancel,
                                s.id.as_str(),
                            )),
                        )
                        .await?;
                    tracing::info!("unpaid subscription canceled before subscribing again");
                    self.new_subscription(org_id, &customer, &price.id, &overage, intent, None)
                        .await?
                }
                // `incomplete` (or a live one not mirrored yet): read again with its open invoice's secret.
                (Some(s), _) => {
                    self.stripe
                        .send(
                            Op::SubscriptionRetrieve,
                            &RetrieveSubscription::new(s.id.as_str())
                                .expand(vec![CONFIRMATION_SECRET.to_owned()]),
                            None,
                        )
                        .await?
                }
                (None, _) => {
                    let trial = (!trial_spent).then_some(self.catalog.trial_days());
                    self.new_subscription(org_id, &customer, &price.id, &overage, intent, trial)
                        .await?
                }
            };
            let read = self.read_retrieved(ticket, &subscription).await?;
            let state = self.mirror(&read).await?.state;
            let client_secret = matches!(
                state.status,
                SubscriptionStatus::Incomplete | SubscriptionStatus::PastDue
            )
            .then(|| open_invoice_secret(&subscription))
            .flatten();
            tracing::info!(
                subscription.status = state.status.as_str(),
                subscription.requires_action = client_secret.is_some(),
                "subscription created or taken up"
            );
            Ok(Created {
                client_secret,
                ..Created::from(&state)
            })
        })
        .await
    }

    /// Creates a subscription on `price`: with a trial of `trial_days` (ending per `TOLLGATE_TRIAL_END_WITHOUT_CARD`
    /// when no card is there by then), or without one, charged at once (`allow_incomplete`: a payment that needs
    /// the customer leaves it `incomplete`, its first invoice open; returned with
    /// `latest_invoice.confirmation_secret` expanded).
    async fn new_subscription(
        &self,
        org_id: &OrgId,
        customer: &str,
        price: &str,
        overage: &[String],
        intent: &Intent,
        trial_days: Option<u32>,
    ) -> Result<stripe_shared::Subscription, BillingError> {
        let trial = trial_days.is_some();
        let items: Vec<_> = std::iter::once(price)
            .chain(overage.iter().map(String::as_str))
            .map(|price| CreateSubscriptionItems {
                price: Some(price.to_owned()),
                ..CreateSubscriptionItems::new()
            })
            .collect();
        let mut request = CreateSubscription::new()
            .customer(customer)
            .items(items)
            .metadata(HashMap::from([(
                "orgId".to_owned(),
                org_id.as_str().to_owned(),
            )]));
        if let Some(days) = trial_days {
            let missing = match self.settings.trial_end_without_card {
                TrialEndWithoutCard::Pause => MissingPaymentMethod::Pause,
                TrialEndWithoutCard::Cancel => MissingPaymentMethod::Cancel,
            };
            request = request.trial_period_days(days).trial_settings(
                CreateSubscriptionTrialSettings::new(CreateSubscriptionTrialSettingsEndBehavior {
                    missing_payment_method: Some(missing),
                    ..CreateSubscriptionTrialSettingsEndBehavior::new()
                }),
            );
        } else {
            // https://docs.stripe.com/billing/subscriptions/overview#requires-action: 3-D Secure (SCA) needs the
            // customer, so the subscription waits `incomplete` for them rather than being refused.
            request = request
                .payment_behavior(CreateSubscriptionPaymentBehavior::AllowIncomplete)
                .expand(vec![CONFIRMATION_SECRET.to_owned()]);
        }
        // Keyed by the caller's intent: a retry of it (ours or our caller's) replays the same subscription; a new
        // intent (subscribing again after a cancellation, or with another card after a decline) makes a new one.
        let key = IdempotencyKey::for_intent(
            intent,
            Op::SubscriptionCreate,
            if trial { "trial" } else { "no-trial" },
        );
        let created = self
            .stripe
            .send(Op::SubscriptionCreate, &request, Some(&key))
            .await?;
        if trial {
            sqlx::query(
                "UPDATE orgs SET trial_granted_at = coalesce(trial_granted_at, now()) WHERE clerk_org_id = $1",
            )
            .bind(org_id.as_str())
            .execute(&self.pg)
            .await?;
        }
        Ok(created)
    }

    /// Whether the org was ever given a trial (recorded when Tollgate asked for one, or mirrored one).
    async fn trial_granted(&self, org_id: i64) -> Result<bool, BillingError> {
        Ok(
            sqlx::query_scalar("SELECT trial_granted_at IS NOT NULL FROM orgs WHERE id = $1")
                .bind(org_id)
                .fetch_optional(&self.pg)
                .await?
                .unwrap_or(false),
        )
    }

    /// The org's default payment method (set through 2.2), if any.
    async fn default_payment_method(&self, org_id: i64) -> Result<Option<String>, BillingError> {
        Ok(sqlx::query_scalar::<_, Option<String>>(
            "SELECT stripe_default_payment_method FROM orgs WHERE id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.pg)
        .await?
        .flatten())
    }

    /// The org's live subscription as stored.
    async fn live_subscription(
        &self,
        org_id: i64,
    ) -> Result<Option<SubscriptionState>, BillingError> {
        let mut conn = self.pg.acquire().await?;
        Ok(store::current(&mut conn, org_id)
            .await?
            .map(|s| s.state)
            .filter(|s| s.status.is_live()))
    }

    /// Reads subscription `id` back from Stripe and mirrors it: the reads with no connection held, then one short
    /// transaction. Idempotent: the same Stripe state writes nothing.
    pub async fn sync_subscription(&self, id: &str) -> Result<Synced, BillingError> {
        let read = self.read_subscription(id).await?;
        self.mirror(&read).await
    }

    /// Writes `read` in a transaction of its own.
    async fn mirror(&self, read: &SubscriptionRead) -> Result<Synced, BillingError> {
        let mut tx = self.pg.begin().await?;
        let synced = self.write_read(&mut tx, read).await?;
        tx.commit().await?;
        self.committed(synced.org_id).await;
        self.keep_overage_items(read).await;
        Ok(synced)
    }

    /// Brings a live subscription's metered items in step with its plan's overage prices after a change made in
    /// Stripe (a price changed in the Dashboard, an item removed): the missing overage items are added, the
    /// overage items of other plans removed (their usage so far billed, as Stripe does for a removed metered
    /// item); metered prices PLANS_CONFIG does not know are left alone. Nothing when they match (the usual case,
    /// and after Tollgate's own changes). A failure is logged; the next event about the subscription tries again.
    pub(super) async fn keep_overage_items(&self, read: &SubscriptionRead) {
        let state = &read.state;
        if !state.status.is_live() {
            return;
        }
        let result = async {
            let wanted = self.overage_items(&state.plan).await?;
            let prices = self.overage_prices().all().await?;
            let ours: Vec<(String, String)> = read
                .metered
                .iter()
                .filter(|(_, price)| prices.values().any(|p| &p.id == price))
                .cloned()
                .collect();
            let edits = super::plans::item_edits(None, &ours, &wanted);
            if edits.is_empty() {
                return Ok::<_, BillingError>(());
            }
            let changed = edits.len();
            let items = super::plans::update_items(edits);
            // Its own intent: two replicas doing it at once add an item once (Stripe refuses a second item with
            // the same price).
            let key = IdempotencyKey::fresh(Op::SubscriptionUpdate);
            self.stripe
                .send(
                    Op::SubscriptionUpdate,
                    &UpdateSubscription::new(state.id.as_str()).items(items),
                    Some(&key),
                )
                .await?;
            tracing::info!(
                subscription.plan = %state.plan,
                items.changed = changed,
                "overage items brought in step with the plan"
            );
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot bring the subscription's overage items in step; the next event will");
        }
    }

    /// Reads subscription `id` back from Stripe (after taking its ticket), with everything its mirror needs.
    pub(super) async fn read_subscription(
        &self,
        id: &str,
    ) -> Result<SubscriptionRead, BillingError> {
        let ticket = store::read_ticket(&self.pg).await?;
        let subscription = self.retrieve_subscription(id).await?;
        self.read_retrieved(ticket, &subscription).await
    }

    /// Completes the read of `subscription` (retrieved after `ticket` was taken): its schedule's next phase, and the
    /// other subscriptions our mirror lets hold the org's slot, read back from Stripe too.
    async fn read_retrieved(
        &self,
        ticket: i64,
        subscription: &stripe_shared::Subscription,
    ) -> Result<SubscriptionRead, BillingError> {
        let state = self.resolve(subscription).await?;
        let org_hint = subscription.metadata.get("orgId").cloned();
        let mut others = Vec::new();
        if state.status.holds_the_slot() {
            let stale: Vec<String> = sqlx::query_scalar(
                "SELECT s.stripe_subscription_id FROM subscriptions s JOIN orgs o ON o.id = s.org_id
                  WHERE (o.stripe_customer_id = $1 OR o.clerk_org_id = $2) AND s.stripe_subscription_id <> $3
                    AND s.status NOT IN ('canceled', 'incomplete_expired')",
            )
            .bind(&state.customer)
            .bind(org_hint.as_deref())
            .bind(&state.id)
            .fetch_all(&self.pg)
            .await?;
            for other in stale {
                let other_ticket = store::read_ticket(&self.pg).await?;
                let other = self.retrieve_subscription(&other).await?;
                others.push((other_ticket, self.resolve(&other).await?));
            }
        }
        let metered = super::plans::Items::of(&subscription.items.data).metered;
        Ok(SubscriptionRead {
            ticket,
            state,
            org_hint,
            others,
            metered,
        })
    }

    /// What Stripe says of `subscription`, mapped onto PLANS_CONFIG (reads its schedule from Stripe).
    async fn resolve(
        &self,
        subscription: &stripe_shared::Subscription,
    ) -> Result<SubscriptionState, BillingError> {
        let facts = self.facts(subscription).await?;
        subscription::resolve(&facts, &self.catalog).map_err(|e| match e {
            // A price no plan names: not Tollgate's (another product on the account), or not yet in PLANS_CONFIG
            // (the operator adds it, then replays the event with 8.1).
            DomainError::Unknown { field: "price", .. } => BillingError::NotOurs {
                reason: IgnoreReason::UnknownPrice,
                detail: format!(
                    "subscription {}: {e}: not a price of PLANS_CONFIG",
                    facts.id
                ),
            },
            e => BillingError::Unmirrorable(format!("subscription {}: {e}", facts.id)),
        })
    }

    async fn retrieve_subscription(
        &self,
        id: &str,
    ) -> Result<stripe_shared::Subscription, BillingError> {
        Ok(self
            .stripe
            .send(
                Op::SubscriptionRetrieve,
                &RetrieveSubscription::new(id),
                None,
            )
            .await?)
    }

    /// Writes `read` in `conn`'s (short) transaction, under the customer's lock (taken here): a stale other that
    /// held the org's slot first, so the one-live-subscription rule follows Stripe rather than refusing it. Each
    /// object is written only if its read is newer than the last one written; otherwise the stored state (newer)
    /// stands and is returned.
    pub(super) async fn write_read(
        &self,
        conn: &mut PgConnection,
        read: &SubscriptionRead,
    ) -> Result<Synced, BillingError> {
        let state = &read.state;
        store::lock_customer(&mut *conn, &state.customer).await?;
        let org_id = self
            .org_of_customer(
                &mut *conn,
                &state.id,
                &state.customer,
                read.org_hint.as_deref(),
            )
            .await?;
        if state.status.holds_the_slot() {
            let holding = store::others_holding_the_slot(&mut *conn, org_id, &state.id).await?;
            if let Some(unread) = holding
                .iter()
                .find(|id| !read.others.iter().any(|(_, o)| &o.id == *id))
            {
                return Err(BillingError::Unmirrorable(format!(
                    "subscription {unread} of the organization appeared while {} was read; retry",
                    state.id
                )));
            }
            for (ticket, other) in &read.others {
                if other.status.holds_the_slot() {
                    return Err(BillingError::Unmirrorable(format!(
                        "organization has two open subscriptions in Stripe ({} and {}); cancel one",
                        other.id, state.id
                    )));
                }
                self.write_one(&mut *conn, org_id, *ticket, other).await?;
            }
        }
        self.write_one(conn, org_id, read.ticket, state).await
    }

    async fn write_one(
        &self,
        conn: &mut PgConnection,
        org_id: i64,
        ticket: i64,
        state: &SubscriptionState,
    ) -> Result<Synced, BillingError> {
        if !store::newer_read(&mut *conn, &state.id, ticket).await? {
            // A read that started later is written already: it stands.
            let stored = store::by_id(&mut *conn, &state.id).await?;
            return Ok(Synced {
                state: stored.map_or_else(|| state.clone(), |s| s.state),
                changed: false,
                org_id,
            });
        }
        let (upserted, before) = store::upsert(&mut *conn, org_id, state).await?;
        if state.trial_end.is_some() && upserted == Upserted::Inserted {
            // An org gets one trial: a trial made anywhere (Tollgate, the Dashboard) spends it.
            sqlx::query(
                "UPDATE orgs SET trial_granted_at = now() WHERE id = $1 AND trial_granted_at IS NULL",
            )
            .bind(org_id)
            .execute(&mut *conn)
            .await?;
        }
        self.mirror_to_stigg(conn, org_id, before.as_ref(), state)
            .await?;
        if upserted != Upserted::Unchanged {
            tracing::info!(
                subscription.status = state.status.as_str(),
                subscription.plan = %state.plan,
                period.key = %state.period.key(),
                "subscription mirrored from stripe"
            );
        }
        Ok(Synced {
            state: state.clone(),
            changed: upserted != Upserted::Unchanged,
            org_id,
        })
    }

    /// The org a subscription belongs to: by its customer, else by `metadata.orgId` (linking the customer).
    async fn org_of_customer(
        &self,
        conn: &mut PgConnection,
        subscription: &str,
        customer: &str,
        org_hint: Option<&str>,
    ) -> Result<i64, BillingError> {
        if let Some(id) = orgs::id_by_stripe_customer(&mut *conn, customer).await? {
            return Ok(id);
        }
        let orphan = || {
            BillingError::Unmirrorable(format!(
                "subscription {subscription}: customer {customer} belongs to no organization"
            ))
        };
        let Some(org) = org_hint else {
            // Made outside Tollgate (the Dashboard, another product): no org will ever own it by itself; an
            // operator who links the customer to an org replays the event (8.1).
            return Err(BillingError::NotOurs {
                reason: IgnoreReason::ForeignCustomer,
                detail: format!(
                    "subscription {subscription}: customer {customer} belongs to no organization and has no \
                     metadata.orgId"
                ),
            });
        };
        // A hint that is no Clerk id names no org, as the lookup by it would find none.
        let Ok(org) = OrgId::parse(org) else {
            return Err(orphan());
        };
        orgs::link_stripe_customer_by_clerk(&mut *conn, &org, customer)
            .await?
            .ok_or_else(orphan)
    }

    /// Queues the Stigg operations that carry a change of the subscription, in the same transaction (Stripe →
    /// database → Stigg).
    async fn mirror_to_stigg(
        &self,
        conn: &mut PgConnection,
        org_id: i64,
        before: Option<&SubscriptionState>,
        after: &SubscriptionState,
    ) -> Result<(), BillingError> {
        if before == Some(after) {
            return Ok(());
        }
        // The org exists (the subscription refers to it); one whose stored id no longer parses has no Stigg twin.
        let Some(org) = orgs::clerk_by_id(&mut *conn, org_id).await? else {
            return Ok(());
        };
        let items = crate::services::stigg::ops::for_subscription(&org, before, after);
        self.stigg.queue(conn, org_id, &items).await?;
        Ok(())
    }

    /// The facts of a Stripe subscription, with its schedule's next phase when one is attached.
    async fn facts(
        &self,
        s: &stripe_shared::Subscription,
    ) -> Result<StripeSubscription, BillingError> {
        let id = s.id.as_str().to_owned();
        // The plan's item: the licensed one (overage items are metered and billed beside it).
        let item = plan_item(&s.items.data).ok_or_else(|| {
            BillingError::Unmirrorable(format!("subscription {id}: has no licensed item"))
        })?;
        let price = StripePrice {
            id: item.price.id.as_str().to_owned(),
            lookup_key: item.price.lookup_key.clone(),
        };
        let status = SubscriptionStatus::parse(s.status.as_str()).map_err(|_| {
            BillingError::Unmirrorable(format!(
                "subscription {id}: unknown status {}",
                s.status.as_str()
            ))
        })?;
        let schedule = s.schedule.as_ref().map(|e| e.id().as_str().to_owned());
        let scheduled = match &schedule {
            Some(schedule_id) => {
                self.next_phase(schedule_id, item.current_period_end, item.price.id.as_str())
                    .await?
            }
            None => None,
        };
        Ok(StripeSubscription {
            id,
            customer: s.customer.id().as_str().to_owned(),
            status,
            price,
            period: Period {
                start: instant(item.current_period_start),
                end: instant(item.current_period_end),
            },
            anchor: instant(s.billing_cycle_anchor),
            trial_end: s.trial_end.map(instant),
            cancel_at_period_end: s.cancel_at_period_end,
            cancel_at: s.cancel_at.map(instant),
            canceled_at: s.canceled_at.map(instant),
            schedule,
            scheduled,
        })
    }

    /// The price a schedule's phase starting at or after `period_end` moves the subscription to.
    ///
    /// A schedule whose phase in force bills another price than the subscription's `price` (the subscription was
    /// changed outside it: an upgrade paid later through Stripe's pending update, after 3-D Secure, or a change in
    /// the portal or the Dashboard) is stale: that later change drops the scheduled downgrade, so the schedule is
    /// released here (confirmed by a re-read) and nothing is pending.
    async fn next_phase(
        &self,
        schedule_id: &str,
        period_end: i64,
        price: &str,
    ) -> Result<Option<(StripePrice, DateTime<Utc>)>, BillingError> {
        let schedule = self
            .stripe
            .send(
                Op::ScheduleRetrieve,
                &RetrieveSubscriptionSchedule::new(schedule_id),
                None,
            )
            .await?;
        let active = matches!(
            schedule.status,
            stripe_shared::SubscriptionScheduleStatus::Active
                | stripe_shared::SubscriptionScheduleStatus::NotStarted
        );
        if !active {
            return Ok(None);
        }
        // A phase's plan item: the one that is not an overage price.
        let overage = self.overage_prices().all().await?;
        let plan_of = |phase: &stripe_shared::SubscriptionSchedulePhaseConfiguration| {
            phase
                .items
                .iter()
                .find(|item| {
                    let id = item.price.id().as_str();
                    !overage.values().any(|p| p.id == id)
                })
                .cloned()
        };
        let in_force_price = schedule.current_phase.as_ref().and_then(|current| {
            schedule
                .phases
                .iter()
                .find(|phase| phase.start_date == current.start_date)
                .and_then(plan_of)
                .map(|item| item.price.id().as_str().to_owned())
        });
        if in_force_price.is_some_and(|p| p != price) {
            tracing::info!(
                subscription.schedule = schedule_id,
                "the subscription's price changed outside its schedule; the scheduled change is dropped"
            );
            self.release_schedule(schedule_id, &crate::stripe::Intent::fresh())
                .await?;
            return Ok(None);
        }
        let next = schedule
            .phases
            .iter()
            .filter(|phase| phase.start_date >= period_end)
            .min_by_key(|phase| phase.start_date);
        let Some(phase) = next else {
            return Ok(None);
        };
        let Some(item) = plan_of(phase) else {
            return Ok(None);
        };
        let (id, lookup_key) = match &item.price {
            stripe_types::Expandable::Id(id) => (id.as_str().to_owned(), None),
            stripe_types::Expandable::Object(price) => {
                (price.id.as_str().to_owned(), price.lookup_key.clone())
            }
        };
        // A phase naming the price by id only: find its lookup key through the plans' resolved prices.
        let lookup_key = match lookup_key {
            Some(key) => Some(key),
            None => self
                .prices()
                .await?
                .iter()
                .find(|(_, info)| info.id == id)
                .and_then(|(code, _)| self.catalog.plan(code))
                .and_then(|plan| match &plan.price {
                    Some(PriceRef::LookupKey(key)) => Some(key.clone()),
                    _ => None,
                }),
        };
        Ok(Some((
            StripePrice { id, lookup_key },
            instant(phase.start_date),
        )))
    }
}
