//! 1.3 `subscription.create`, and mirroring a subscription from Stripe — the one path by which the
//! `subscriptions` table changes (the webhook worker, 2.4, and every plan change use it).

use super::{Billing, BillingError, instant, org};
use crate::stripe::{IdempotencyKey, Op};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::HashMap;
use stripe_billing::subscription::{
    CreateSubscription, CreateSubscriptionItems, ListSubscription, ListSubscriptionStatus,
    RetrieveSubscription,
};
use stripe_billing::subscription_schedule::RetrieveSubscriptionSchedule;
use tollgate_common::domain::subscription::{self, StripePrice, StripeSubscription};
use tollgate_common::domain::{OrgId, Period, PriceRef, SubscriptionState, SubscriptionStatus};
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
}

impl From<&SubscriptionState> for Created {
    fn from(s: &SubscriptionState) -> Self {
        Self {
            subscription_id: s.id.clone(),
            status: s.status,
            trial_ends_at: s.trial_end,
        }
    }
}

/// What [`Billing::sync_subscription`] did.
#[derive(Debug, Clone)]
pub struct Synced {
    /// The state now stored.
    pub state: SubscriptionState,
    /// Whether the row changed.
    pub changed: bool,
}

impl Billing {
    /// Starts the org's trial on the plan whose price is `price_lookup` (a `price` of PLANS_CONFIG), or returns the
    /// live subscription it already has.
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn create_subscription(
        &self,
        org_id: &OrgId,
        price_lookup: &str,
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
        let mut tx = self.pg.begin().await?;
        let org = org(&mut tx, org_id, true).await?;
        let customer = org.customer()?.to_owned();
        store::lock_customer(&mut tx, &customer).await?;
        if let Some(current) = store::current(&mut tx, org.id).await?
            && current.state.status.is_live()
        {
            return Ok(Created::from(&current.state));
        }
        // Stripe may hold a live one we have not mirrored yet (its webhook is on the way).
        let existing = self
            .stripe
            .send(
                Op::SubscriptionList,
                &ListSubscription::new()
                    .customer(customer.as_str())
                    .status(ListSubscriptionStatus::All)
                    .limit(20),
                None,
            )
            .await?
            .data
            .into_iter()
            .find(|s| {
                SubscriptionStatus::parse(s.status.as_str()).is_ok_and(SubscriptionStatus::is_live)
            });
        let subscription = match existing {
            Some(s) => s,
            None => {
                let request = CreateSubscription::new()
                    .customer(customer.as_str())
                    .items(vec![CreateSubscriptionItems {
                        price: Some(price.id.clone()),
                        ..CreateSubscriptionItems::new()
                    }])
                    .trial_period_days(self.catalog.trial_days())
                    .metadata(HashMap::from([(
                        "orgId".to_owned(),
                        org_id.as_str().to_owned(),
                    )]));
                // Keyed by the org, its price and how many subscriptions it has had: a retry (ours or our
                // caller's) replays the same subscription; subscribing again after a cancellation makes a new one.
                let earlier: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE org_id = $1")
                        .bind(org.id)
                        .fetch_one(&mut *tx)
                        .await?;
                let key = IdempotencyKey::derive(
                    Op::SubscriptionCreate,
                    &[org_id.as_str(), &customer, &price.id, &earlier.to_string()],
                );
                self.stripe
                    .send(Op::SubscriptionCreate, &request, Some(&key))
                    .await?
            }
        };
        let state = self.mirror(&mut tx, org.id, &subscription).await?.state;
        tx.commit().await?;
        tracing::info!(
            subscription.status = state.status.as_str(),
            "trial subscription created"
        );
        Ok(Created::from(&state))
    }

    /// Reads subscription `id` back from Stripe and mirrors it, in `conn`'s transaction, under the customer's
    /// lock (taken here). Idempotent: the same Stripe state writes nothing.
    pub async fn sync_subscription(
        &self,
        conn: &mut PgConnection,
        id: &str,
    ) -> Result<Synced, BillingError> {
        // The lock needs the customer before the read; the stored row has it, else a first read tells.
        let customer = match store::by_id(&mut *conn, id).await? {
            Some(stored) => stored.state.customer,
            None => {
                let first = self.retrieve_subscription(id).await?;
                first.customer.id().as_str().to_owned()
            }
        };
        store::lock_customer(&mut *conn, &customer).await?;
        let subscription = self.retrieve_subscription(id).await?;
        let org_id = self.org_of_customer(&mut *conn, &subscription).await?;
        self.mirror(conn, org_id, &subscription).await
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

    /// The org a subscription belongs to: by its customer, else by `metadata.orgId` (linking the customer).
    async fn org_of_customer(
        &self,
        conn: &mut PgConnection,
        subscription: &stripe_shared::Subscription,
    ) -> Result<i64, BillingError> {
        let customer = subscription.customer.id().as_str().to_owned();
        let by_customer: Option<i64> =
            sqlx::query_scalar("SELECT id FROM orgs WHERE stripe_customer_id = $1")
                .bind(&customer)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(id) = by_customer {
            return Ok(id);
        }
        let Some(org) = subscription.metadata.get("orgId") else {
            return Err(BillingError::Unmirrorable(format!(
                "subscription {}: customer {customer} belongs to no organization",
                subscription.id.as_str()
            )));
        };
        let linked: Option<i64> = sqlx::query_scalar(
            "UPDATE orgs SET stripe_customer_id = $2, updated_at = now()
              WHERE clerk_org_id = $1 AND stripe_customer_id IS NULL RETURNING id",
        )
        .bind(org)
        .bind(&customer)
        .fetch_optional(&mut *conn)
        .await?;
        linked.ok_or_else(|| {
            BillingError::Unmirrorable(format!(
                "subscription {}: customer {customer} belongs to no organization",
                subscription.id.as_str()
            ))
        })
    }

    /// Writes what Stripe says of `subscription` (the caller holds the customer's lock). A stale row of the same
    /// org that still holds its slot is read back from Stripe first, so the one-live-subscription rule follows
    /// Stripe rather than refusing it.
    async fn mirror(
        &self,
        conn: &mut PgConnection,
        org_id: i64,
        subscription: &stripe_shared::Subscription,
    ) -> Result<Synced, BillingError> {
        let facts = self.facts(subscription).await?;
        let state = subscription::resolve(&facts, &self.catalog)
            .map_err(|e| BillingError::Unmirrorable(format!("subscription {}: {e}", facts.id)))?;
        if state.status.holds_the_slot() {
            for other in store::others_holding_the_slot(&mut *conn, org_id, &state.id).await? {
                let other = self.retrieve_subscription(&other).await?;
                let other_facts = self.facts(&other).await?;
                let other_state =
                    subscription::resolve(&other_facts, &self.catalog).map_err(|e| {
                        BillingError::Unmirrorable(format!("subscription {}: {e}", other_facts.id))
                    })?;
                if other_state.status.holds_the_slot() {
                    return Err(BillingError::Unmirrorable(format!(
                        "organization has two open subscriptions in Stripe ({} and {}); cancel one",
                        other_state.id, state.id
                    )));
                }
                let (_, before) = store::upsert(&mut *conn, org_id, &other_state).await?;
                self.mirror_to_stigg(conn, org_id, before.as_ref(), &other_state)
                    .await?;
            }
        }
        let (upserted, before) = store::upsert(&mut *conn, org_id, &state).await?;
        self.mirror_to_stigg(conn, org_id, before.as_ref(), &state)
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
            state,
            changed: upserted != Upserted::Unchanged,
        })
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
        let org: String = sqlx::query_scalar("SELECT clerk_org_id FROM orgs WHERE id = $1")
            .bind(org_id)
            .fetch_one(&mut *conn)
            .await?;
        let Ok(org) = OrgId::parse(&org) else {
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
        let item = s.items.data.first().ok_or_else(|| {
            BillingError::Unmirrorable(format!("subscription {id}: has no items"))
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
                self.next_phase(schedule_id, item.current_period_end)
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
            canceled_at: s.canceled_at.map(instant),
            schedule,
            scheduled,
        })
    }

    /// The price a schedule's phase starting at or after `period_end` moves the subscription to.
    async fn next_phase(
        &self,
        schedule_id: &str,
        period_end: i64,
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
        let next = schedule
            .phases
            .iter()
            .filter(|phase| phase.start_date >= period_end)
            .min_by_key(|phase| phase.start_date);
        let Some(phase) = next else {
            return Ok(None);
        };
        let Some(item) = phase.items.first() else {
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
