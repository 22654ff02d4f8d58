//! 5.1 preview, 5.2 upgrade now, 5.3 downgrade at period end (CONTRACT §8).
//!
//! Which it is comes from the plans' Stripe price amounts ([`PlanChange::between`]): a higher monthly amount is an
//! upgrade. An upgrade is prorated and invoiced at once; a downgrade is a subscription schedule in Stripe that
//! switches the price at renewal, so it happens even if Tollgate is down then.
//!
//! Prorations are computed by Stripe for a `proration_date`; preview and upgrade use the start of the current
//! minute (never before the period's start), so a preview shown to a user is exactly what an upgrade made within
//! the same minute invoices.

use super::{Billing, BillingError, OrgBilling, PriceInfo, org};
use crate::stripe::{IdempotencyKey, Intent, Op, StripeError};
use chrono::{DateTime, Utc};
use stripe_billing::invoice::{
    CreatePreviewInvoice, CreatePreviewInvoiceSubscriptionDetails,
    CreatePreviewInvoiceSubscriptionDetailsItems,
    CreatePreviewInvoiceSubscriptionDetailsProrationBehavior,
};
use stripe_billing::subscription::{
    RetrieveSubscription, UpdateSubscription, UpdateSubscriptionItems,
    UpdateSubscriptionPaymentBehavior, UpdateSubscriptionProrationBehavior,
};
use stripe_billing::subscription_schedule::{
    CreateSubscriptionSchedule, ReleaseSubscriptionSchedule, RetrieveSubscriptionSchedule,
    UpdateSubscriptionSchedule, UpdateSubscriptionSchedulePhases,
    UpdateSubscriptionSchedulePhasesDuration, UpdateSubscriptionSchedulePhasesDurationInterval,
    UpdateSubscriptionSchedulePhasesEndDate, UpdateSubscriptionSchedulePhasesItems,
    UpdateSubscriptionSchedulePhasesProrationBehavior, UpdateSubscriptionSchedulePhasesStartDate,
    UpdateSubscriptionSchedulePhasesTrialEnd,
};
use tollgate_common::domain::{OrgId, PlanChange, PlanCode, SubscriptionState};
use tollgate_common::store::subscriptions as store;

/// 5.1's answer.
#[derive(Debug, Clone)]
pub struct Preview {
    /// For an upgrade, what it charges now: the sum of the preview's proration lines (Stripe's recommended way,
    /// <https://docs.stripe.com/billing/subscriptions/prorations#preview-proration>); for a downgrade, the first
    /// renewal at the new price. Minor units.
    pub amount: i64,
    /// Lower-case ISO currency.
    pub currency: String,
    /// Whether it is a proration (an upgrade, invoiced now) or the first renewal at the new price (a downgrade).
    pub proration: bool,
    /// Its lines (for an upgrade, only the proration lines: what is invoiced now).
    pub items: Vec<PreviewItem>,
    /// The next renewal invoice after the change.
    pub next_invoice: NextInvoice,
}

/// The renewal invoice a [`Preview`] also shows.
#[derive(Debug, Clone)]
pub struct NextInvoice {
    /// Minor units.
    pub amount: i64,
    /// Lower-case ISO currency.
    pub currency: String,
    /// When it is invoiced: the current period's end.
    pub at: DateTime<Utc>,
}

/// One line of a [`Preview`].
#[derive(Debug, Clone)]
pub struct PreviewItem {
    /// Stripe's description.
    pub description: String,
    /// Minor units (negative for a credit).
    pub amount: i64,
    /// Whether the line is a proration.
    pub proration: bool,
}

/// 5.2's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgraded {
    /// Paid and in force: the plan now.
    Immediate(PlanCode),
    /// The payment needs the customer (3-D Secure, or another card): nothing changed yet. The frontend confirms
    /// the invoice's payment with Stripe.js and this `client_secret`; once paid, Stripe applies the upgrade and
    /// the webhooks bring the mirror in step. Unpaid, Stripe drops the pending update when it expires (23 h).
    RequiresAction {
        /// The invoice's confirmation secret (a PaymentIntent's client secret).
        client_secret: String,
    },
}

/// 5.3's answer.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// When the new plan takes over: the current period's end.
    pub effective_at: DateTime<Utc>,
    /// The plan.
    pub pending_plan: PlanCode,
}

/// A requested change, resolved against the stored subscription and Stripe's prices.
struct Change {
    customer: String,
    stored: SubscriptionState,
    change: PlanChange,
    next: PlanCode,
    next_price: PriceInfo,
    /// The overage prices of the current plan and of the next one (metered items beside the plan's price).
    overage: Vec<String>,
    next_overage: Vec<String>,
}

/// A subscription's items as Stripe has them.
pub(super) struct Items {
    /// The plan's (licensed) item, `si_…`.
    pub plan: Option<String>,
    /// The other items, all metered: (`si_…`, `price_…`).
    pub metered: Vec<(String, String)>,
}

impl Items {
    /// Splits a subscription's items into the plan's and the metered ones.
    pub(super) fn of(items: &[stripe_shared::SubscriptionItem]) -> Self {
        let plan = super::subscriptions::plan_item(items).map(|item| item.id.as_str().to_owned());
        let metered = items
            .iter()
            .filter(|item| Some(item.id.as_str()) != plan.as_deref())
            .map(|item| {
                (
                    item.id.as_str().to_owned(),
                    item.price.id.as_str().to_owned(),
                )
            })
            .collect();
        Self { plan, metered }
    }
}

/// One change to a subscription's items, for an update or its preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ItemEdit {
    /// The item `id` takes `price` (the plan's item, on a plan change).
    Reprice { id: String, price: String },
    /// The item `id` goes.
    Remove(String),
    /// An item of `price` comes.
    Add(String),
}

impl ItemEdit {
    fn update(self) -> UpdateSubscriptionItems {
        let (id, price, deleted) = self.parts();
        UpdateSubscriptionItems {
            id,
            price,
            deleted,
            ..UpdateSubscriptionItems::new()
        }
    }

    fn preview(self) -> CreatePreviewInvoiceSubscriptionDetailsItems {
        let (id, price, deleted) = self.parts();
        CreatePreviewInvoiceSubscriptionDetailsItems {
            id,
            price,
            deleted,
            ..CreatePreviewInvoiceSubscriptionDetailsItems::new()
        }
    }

    /// (`id`, `price`, `deleted`) as both Stripe requests take them.
    fn parts(self) -> (Option<String>, Option<String>, Option<bool>) {
        match self {
            Self::Reprice { id, price } => (Some(id), Some(price), None),
            Self::Remove(id) => (Some(id), None, Some(true)),
            Self::Add(price) => (None, Some(price), None),
        }
    }
}

/// The edits that bring the metered items `current` (`si_…`, `price_…`) to the overage prices `next`, after the plan's
/// item taking its new price when `plan` is given: an item whose price `next` does not bill goes, a price of `next`
/// not on the subscription comes, and an item whose price both bill stays, with its usage.
pub(super) fn item_edits(
    plan: Option<ItemEdit>,
    current: &[(String, String)],
    next: &[String],
) -> Vec<ItemEdit> {
    let gone = current
        .iter()
        .filter(|(_, price)| !next.contains(price))
        .map(|(id, _)| ItemEdit::Remove(id.clone()));
    let added = next
        .iter()
        .filter(|price| !current.iter().any(|(_, p)| p == *price))
        .map(|price| ItemEdit::Add(price.clone()));
    plan.into_iter().chain(gone).chain(added).collect()
}

/// The subscription update that applies `edits`.
pub(super) fn update_items(edits: Vec<ItemEdit>) -> Vec<UpdateSubscriptionItems> {
    edits.into_iter().map(ItemEdit::update).collect()
}

impl Billing {
    /// Resolves a change of `org` to `new_plan`: the stored live subscription (one short query) and the plans'
    /// prices (from Stripe, no connection held).
    async fn change(&self, org: &OrgBilling, new_plan: &str) -> Result<Change, BillingError> {
        let next = self.paid_plan("newPlanCode", new_plan)?.code.clone();
        let customer = org.customer()?.to_owned();
        let stored = store::current(&mut *self.pg.acquire().await?, org.id)
            .await?
            .filter(|s| s.state.status.is_live())
            .ok_or_else(|| {
                BillingError::conflict(
                    "orgId",
                    "this organization has no live subscription; start one with /api/stripe/subscription.create",
                )
            })?
            .state;
        let prices = self.prices().await?;
        let (Some(current_price), Some(next_price)) = (prices.get(&stored.plan), prices.get(&next))
        else {
            return Err(BillingError::Unmirrorable(
                "a plan of this change has no Stripe price".to_owned(),
            ));
        };
        let change =
            PlanChange::between(&stored.plan, current_price.amount, &next, next_price.amount)
                .ok_or_else(|| {
                    BillingError::conflict(
                        "newPlanCode",
                        format!("the subscription is already on `{next}`"),
                    )
                })?;
        let overage = self.overage_items(&stored.plan).await?;
        let next_overage = self.overage_items(&next).await?;
        Ok(Change {
            customer,
            stored,
            change,
            next,
            next_price: next_price.clone(),
            overage,
            next_overage,
        })
    }

    /// The `proration_date` for changes made now: the start of this minute, not before the period's start.
    fn proration_date(&self, stored: &SubscriptionState) -> i64 {
        let now = self.now().timestamp();
        (now - now.rem_euclid(60)).max(stored.period.start.timestamp())
    }

    /// The edits of a change to `c.next`: the plan's item (read from Stripe) takes the new price, and the metered
    /// items follow the new plan's overage prices.
    async fn change_edits(&self, c: &Change) -> Result<Vec<ItemEdit>, BillingError> {
        let s = self
            .stripe
            .send(
                Op::SubscriptionRetrieve,
                &RetrieveSubscription::new(c.stored.id.as_str()),
                None,
            )
            .await?;
        let items = Items::of(&s.items.data);
        let plan = items.plan.ok_or_else(|| {
            BillingError::Unmirrorable(format!(
                "subscription {}: has no licensed item",
                c.stored.id
            ))
        })?;
        let reprice = ItemEdit::Reprice {
            id: plan,
            price: c.next_price.id.clone(),
        };
        Ok(item_edits(Some(reprice), &items.metered, &c.next_overage))
    }

    /// 5.1: what changing to `new_plan` costs: for an upgrade, exactly what 5.2 invoices now; for a downgrade, the
    /// first renewal at the new price.
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn preview(&self, org_id: &OrgId, new_plan: &str) -> Result<Preview, BillingError> {
        self.paid_plan("newPlanCode", new_plan)?;
        let org = org(&self.pg, org_id).await?;
        let c = self.change(&org, new_plan).await?;
        let upgrade = c.change == PlanChange::Upgrade;
        let preview_items = self
            .change_edits(&c)
            .await?
            .into_iter()
            .map(ItemEdit::preview)
            .collect();
        // `create_prorations`: Stripe's preview of the next invoice, which carries the prorations of the change
        // (exactly what `always_invoice` invoices now, for the same `proration_date`) and the next renewal. The
        // proration lines are what the upgrade charges now; the rest is the renewal.
        let details = CreatePreviewInvoiceSubscriptionDetails {
            items: Some(preview_items),
            proration_behavior: Some(if upgrade {
                CreatePreviewInvoiceSubscriptionDetailsProrationBehavior::CreateProrations
            } else {
                CreatePreviewInvoiceSubscriptionDetailsProrationBehavior::None
            }),
            proration_date: upgrade.then(|| self.proration_date(&c.stored)),
            ..CreatePreviewInvoiceSubscriptionDetails::new()
        };
        let request = CreatePreviewInvoice::new()
            .customer(c.customer.as_str())
            .subscription(c.stored.id.as_str())
            .subscription_details(details);
        // A preview creates nothing; its key only makes our own retries of it one request.
        let key = IdempotencyKey::fresh(Op::InvoicePreview);
        let invoice = self
            .stripe
            .send(Op::InvoicePreview, &request, Some(&key))
            .await?;
        let lines: Vec<PreviewItem> = invoice
            .lines
            .data
            .iter()
            .map(|line| PreviewItem {
                description: line.description.clone().unwrap_or_default(),
                amount: line.amount,
                proration: line.parent.as_ref().is_some_and(|p| {
                    p.subscription_item_details
                        .as_ref()
                        .is_some_and(|d| d.proration)
                        || p.invoice_item_details.as_ref().is_some_and(|d| d.proration)
                }),
            })
            .collect();
        let currency = invoice.currency.to_string().to_ascii_lowercase();
        let (now, renewal): (Vec<PreviewItem>, Vec<PreviewItem>) =
            lines.into_iter().partition(|line| line.proration);
        let renewal_amount: i64 = renewal.iter().map(|line| line.amount).sum();
        let next_invoice = NextInvoice {
            amount: renewal_amount,
            currency: currency.clone(),
            at: c.stored.period.end,
        };
        Ok(if upgrade {
            Preview {
                amount: now.iter().map(|line| line.amount).sum(),
                currency,
                proration: true,
                items: now,
                next_invoice,
            }
        } else {
            Preview {
                amount: invoice.total,
                currency,
                proration: false,
                items: renewal,
                next_invoice,
            }
        })
    }

    /// 5.2: changes to `new_plan` now, prorated and invoiced at once; the new plan's limits apply at once (the
    /// period, and so its usage counter, stays). A pending downgrade is dropped once the upgrade is paid.
    ///
    /// `payment_behavior=pending_if_incomplete` (<https://docs.stripe.com/billing/subscriptions/pending-updates>):
    /// when the payment needs the customer (3-D Secure), Stripe keeps the change pending on the subscription
    /// (`pending_update`) and nothing changes until the invoice is paid, so a pending downgrade is kept meanwhile;
    /// the answer is then [`Upgraded::RequiresAction`]. Stripe's keys derive from `intent`.
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn upgrade_now(
        &self,
        org_id: &OrgId,
        new_plan: &str,
        intent: &Intent,
    ) -> Result<Upgraded, BillingError> {
        self.paid_plan("newPlanCode", new_plan)?;
        let org = org(&self.pg, org_id).await?;
        org.customer()?;
        self.changing(&org, "upgrade.now", async {
            let c = self.change(&org, new_plan).await?;
            if c.change != PlanChange::Upgrade {
                return Err(BillingError::invalid(
                    "newPlanCode",
                    format!(
                        "`{}` is a downgrade; schedule it with /api/plans/downgrade.schedule",
                        c.next
                    ),
                ));
            }
            let update_items = update_items(self.change_edits(&c).await?);
            let proration_date = self.proration_date(&c.stored);
            let request = UpdateSubscription::new(c.stored.id.as_str())
                .items(update_items)
                .proration_behavior(UpdateSubscriptionProrationBehavior::AlwaysInvoice)
                .proration_date(proration_date)
                .payment_behavior(UpdateSubscriptionPaymentBehavior::PendingIfIncomplete)
                .expand(vec!["latest_invoice.confirmation_secret".to_owned()]);
            // Keyed by the intent: a retry of it replays Stripe's answer; a new intent finds the subscription
            // already upgraded (409) rather than upgrading twice.
            let key = IdempotencyKey::for_intent(intent, Op::SubscriptionUpdate, "upgrade");
            let updated = self
                .stripe
                .send(Op::SubscriptionUpdate, &request, Some(&key))
                .await?;
            if updated.pending_update.is_some() {
                let client_secret = updated
                    .latest_invoice
                    .as_ref()
                    .and_then(|invoice| invoice.as_object())
                    .and_then(|invoice| invoice.confirmation_secret.as_ref())
                    .map(|secret| secret.client_secret.clone())
                    .ok_or_else(|| {
                        BillingError::Unmirrorable(
                            "Stripe kept the upgrade pending without a confirmation secret"
                                .to_owned(),
                        )
                    })?;
                self.sync_subscription(&c.stored.id).await?;
                tracing::info!(plan.from = %c.stored.plan, plan.to = %c.next, "upgrade awaits the customer's payment");
                return Ok(Upgraded::RequiresAction { client_secret });
            }
            // Paid and in force: a pending downgrade is dropped.
            if let Some(schedule) = &c.stored.schedule {
                self.release_schedule(schedule, intent).await?;
            }
            let synced = self.sync_subscription(&c.stored.id).await?;
            tracing::info!(plan.from = %c.stored.plan, plan.to = %synced.state.plan, "upgraded now");
            Ok(Upgraded::Immediate(synced.state.plan))
        })
        .await
    }

    /// 5.3: schedules `new_plan` for the end of the current period, in Stripe (a subscription schedule whose second
    /// phase bills the new price). Limits change only when the renewal arrives.
    ///
    /// The phases are built from the schedule's phase in force (`current_phase`), never from a past phase: after a
    /// first downgrade took effect, the schedule's first phase lies in the past and Stripe refuses to have it
    /// rebuilt. The phase in force keeps its trial end, so a downgrade during a trial keeps the trial.
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn schedule_downgrade(
        &self,
        org_id: &OrgId,
        new_plan: &str,
        intent: &Intent,
    ) -> Result<Scheduled, BillingError> {
        self.paid_plan("newPlanCode", new_plan)?;
        let org = org(&self.pg, org_id).await?;
        org.customer()?;
        self.changing(&org, "downgrade.schedule", async {
            let c = self.change(&org, new_plan).await?;
            if c.change != PlanChange::Downgrade {
                return Err(BillingError::invalid(
                    "newPlanCode",
                    format!(
                        "`{}` is an upgrade; make it with /api/plans/upgrade.now",
                        c.next
                    ),
                ));
            }
            let attached = match &c.stored.schedule {
                Some(id) => Some(
                    self.stripe
                        .send(
                            Op::ScheduleRetrieve,
                            &RetrieveSubscriptionSchedule::new(id.as_str()),
                            None,
                        )
                        .await?,
                ),
                None => None,
            };
            // A released or completed schedule cannot be changed: a new one takes its place.
            let usable = attached.filter(|s| {
                matches!(
                    s.status,
                    stripe_shared::SubscriptionScheduleStatus::Active
                        | stripe_shared::SubscriptionScheduleStatus::NotStarted
                )
            });
            let schedule = match usable {
                Some(schedule) => schedule,
                None => {
                    // Keyed by the intent: after an upgrade released the last one, a new downgrade (a new intent)
                    // makes a new schedule instead of replaying the released one.
                    let key = IdempotencyKey::for_intent(intent, Op::ScheduleCreate, "downgrade");
                    self.stripe
                        .send(
                            Op::ScheduleCreate,
                            &CreateSubscriptionSchedule::new()
                                .from_subscription(c.stored.id.as_str()),
                            Some(&key),
                        )
                        .await?
                }
            };
            let plan = downgrade_phases(&schedule, &c.stored);
            let item = |price: &str| UpdateSubscriptionSchedulePhasesItems {
                price: Some(price.to_owned()),
                ..UpdateSubscriptionSchedulePhasesItems::new()
            };
            // Each phase bills its plan's price and, beside it, its plan's overage prices.
            let phase_items = |price: &str, overage: &[String]| {
                std::iter::once(price)
                    .chain(overage.iter().map(String::as_str))
                    .map(item)
                    .collect::<Vec<_>>()
            };
            let mut now_phase =
                UpdateSubscriptionSchedulePhases::new(phase_items(&c.stored.price_id, &c.overage));
            now_phase.start_date = Some(UpdateSubscriptionSchedulePhasesStartDate::Timestamp(
                plan.start,
            ));
            now_phase.end_date = Some(UpdateSubscriptionSchedulePhasesEndDate::Timestamp(
                plan.end,
            ));
            now_phase.trial_end = plan
                .trial_end
                .map(UpdateSubscriptionSchedulePhasesTrialEnd::Timestamp);
            now_phase.proration_behavior =
                Some(UpdateSubscriptionSchedulePhasesProrationBehavior::None);
            let mut next_phase = UpdateSubscriptionSchedulePhases::new(phase_items(
                &c.next_price.id,
                &c.next_overage,
            ));
            next_phase.duration = Some(UpdateSubscriptionSchedulePhasesDuration {
                interval: UpdateSubscriptionSchedulePhasesDurationInterval::Month,
                interval_count: Some(1),
            });
            next_phase.proration_behavior =
                Some(UpdateSubscriptionSchedulePhasesProrationBehavior::None);
            let request = UpdateSubscriptionSchedule::new(schedule.id.as_str())
                .phases(vec![now_phase, next_phase])
                .end_behavior(stripe_shared::SubscriptionScheduleEndBehavior::Release);
            let key = IdempotencyKey::for_intent(intent, Op::ScheduleUpdate, "downgrade");
            self.stripe
                .send(Op::ScheduleUpdate, &request, Some(&key))
                .await?;
            let synced = self.sync_subscription(&c.stored.id).await?;
            let pending = synced.state.pending.ok_or_else(|| {
                BillingError::Unmirrorable("Stripe did not keep the scheduled phase".to_owned())
            })?;
            tracing::info!(plan.from = %c.stored.plan, plan.to = %pending.plan, "downgrade scheduled");
            Ok(Scheduled {
                effective_at: pending.effective_at,
                pending_plan: pending.plan,
            })
        })
        .await
    }

    /// Releases a schedule: the subscription keeps its current price and nothing happens at renewal. Done only
    /// when a re-read shows the schedule `released`, `completed` or `canceled`: a refused release (a 400 for any
    /// other reason, a 404 that is not Stripe's `resource_missing`) is a failure, never "already released".
    pub(super) async fn release_schedule(
        &self,
        schedule: &str,
        intent: &Intent,
    ) -> Result<(), BillingError> {
        let key = IdempotencyKey::for_intent(intent, Op::ScheduleRelease, schedule);
        let refused = match self
            .stripe
            .send(
                Op::ScheduleRelease,
                &ReleaseSubscriptionSchedule::new(schedule),
                Some(&key),
            )
            .await
        {
            Ok(released) if schedule_is_over(&released.status) => return Ok(()),
            Ok(_) => None,
            Err(e @ StripeError::Refused { .. }) => Some(e),
            Err(e) => return Err(e.into()),
        };
        let reread = match self
            .stripe
            .send(
                Op::ScheduleRetrieve,
                &RetrieveSubscriptionSchedule::new(schedule),
                None,
            )
            .await
        {
            Ok(s) => s,
            Err(e) if e.is_missing() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if schedule_is_over(&reread.status) {
            return Ok(());
        }
        Err(match refused {
            Some(e) => e.into(),
            None => BillingError::Unmirrorable(format!(
                "subscription schedule {schedule}: still {} after its release",
                reread.status.as_str()
            )),
        })
    }
}

/// Whether a schedule no longer governs its subscription.
fn schedule_is_over(status: &stripe_shared::SubscriptionScheduleStatus) -> bool {
    use stripe_shared::SubscriptionScheduleStatus as S;
    matches!(status, S::Released | S::Completed | S::Canceled)
}

/// The phase in force that a downgrade's schedule update sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PhaseInForce {
    start: i64,
    end: i64,
    trial_end: Option<i64>,
}

/// The phase in force, from the schedule's `current_phase` (its start must be sent unchanged), ending at the current
/// period's end; its trial end kept while the subscription is trialing. Falls back to the stored period when the
/// schedule has no phase in force (one not started yet).
fn downgrade_phases(
    schedule: &stripe_shared::SubscriptionSchedule,
    stored: &SubscriptionState,
) -> PhaseInForce {
    let start = schedule
        .current_phase
        .as_ref()
        .map_or(stored.period.start.timestamp(), |p| p.start_date);
    let in_force = schedule.phases.iter().find(|p| p.start_date == start);
    let trialing = stored.status == tollgate_common::domain::SubscriptionStatus::Trialing;
    let trial_end = trialing
        .then(|| {
            in_force
                .and_then(|p| p.trial_end)
                .or_else(|| stored.trial_end.map(|t| t.timestamp()))
        })
        .flatten();
    PhaseInForce {
        start,
        end: stored.period.end.timestamp(),
        trial_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_common::domain::{Period, SubscriptionStatus};

    /// A schedule as Stripe answers it: phases `(start, end, trial_end)`, the one starting at `current` in force.
    fn schedule(
        phases: &[(i64, i64, Option<i64>)],
        current: i64,
    ) -> stripe_shared::SubscriptionSchedule {
        let phases: Vec<_> = phases
            .iter()
            .map(|(start, end, trial_end)| {
                serde_json::json!({
                    "add_invoice_items": [], "currency": "usd", "discounts": [], "end_date": end,
                    "start_date": start, "trial_end": trial_end, "proration_behavior": "none",
                    "items": [{"discounts": [], "plan": "price_a", "price": "price_a", "quantity": 1}],
                })
            })
            .collect();
        let end = phases
            .iter()
            .find(|p| p["start_date"] == current)
            .map_or(0, |p| p["end_date"].as_i64().unwrap_or(0));
        miniserde::json::from_str(&serde_json::json!({
            "id": "sub_sched_1", "object": "subscription_schedule", "created": 1, "customer": "cus_1",
            "livemode": false, "status": "active", "end_behavior": "release", "phases": phases,
            "billing_mode": {"type": "flexible"},
            "current_phase": {"start_date": current, "end_date": end},
            "default_settings": {"billing_cycle_anchor": "automatic", "invoice_settings": {"issuer": {"type": "self"}}},
        })
        .to_string())
        .expect("a schedule")
    }

    fn stored(
        status: SubscriptionStatus,
        start: i64,
        end: i64,
        trial_end: Option<i64>,
    ) -> SubscriptionState {
        SubscriptionState {
            id: "sub_1".to_owned(),
            customer: "cus_1".to_owned(),
            status,
            plan: PlanCode::parse("growth").expect("plan"),
            price_id: "price_a".to_owned(),
            period: Period {
                start: super::super::instant(start),
                end: super::super::instant(end),
            },
            anchor: super::super::instant(start),
            trial_end: trial_end.map(super::super::instant),
            cancel_at_period_end: false,
            cancel_at: None,
            canceled_at: None,
            schedule: Some("sub_sched_1".to_owned()),
            pending: None,
        }
    }

    #[test]
    fn metered_items_follow_the_next_plans_overage_prices() {
        let current = vec![
            ("si_a".to_owned(), "price_calls".to_owned()),
            ("si_b".to_owned(), "price_storage".to_owned()),
        ];
        // The shared price stays (with its usage), the other goes, the new one comes; the plan's item first.
        let reprice = ItemEdit::Reprice {
            id: "si_plan".to_owned(),
            price: "price_pro".to_owned(),
        };
        assert_eq!(
            item_edits(
                Some(reprice.clone()),
                &current,
                &["price_calls".to_owned(), "price_seats".to_owned()],
            ),
            vec![
                reprice,
                ItemEdit::Remove("si_b".to_owned()),
                ItemEdit::Add("price_seats".to_owned())
            ]
        );
        // A plan without overage drops every metered item; one from none adds them all; in step, nothing.
        assert_eq!(item_edits(None, &current, &[]).len(), 2);
        assert_eq!(
            item_edits(None, &[], &["price_calls".to_owned()]),
            vec![ItemEdit::Add("price_calls".to_owned())]
        );
        let same = ["price_calls".to_owned(), "price_storage".to_owned()];
        assert!(item_edits(None, &current, &same).is_empty());
    }

    #[test]
    fn a_later_downgrade_starts_from_the_phase_in_force_not_a_past_one() {
        // The first downgrade took effect at 200: phase [100, 200) is past, [200, 300) is in force.
        let s = schedule(&[(100, 200, None), (200, 300, None)], 200);
        let phase = downgrade_phases(&s, &stored(SubscriptionStatus::Active, 200, 300, None));
        assert_eq!(
            phase,
            PhaseInForce {
                start: 200,
                end: 300,
                trial_end: None
            }
        );
    }

    #[test]
    fn a_downgrade_during_a_trial_keeps_its_end() {
        let s = schedule(&[(100, 400, Some(400))], 100);
        let trialing = stored(SubscriptionStatus::Trialing, 100, 400, Some(400));
        assert_eq!(downgrade_phases(&s, &trialing).trial_end, Some(400));
        // A trial that ended long ago is not sent back.
        let s = schedule(&[(100, 400, Some(400)), (400, 500, None)], 400);
        let active = stored(SubscriptionStatus::Active, 400, 500, Some(400));
        assert_eq!(downgrade_phases(&s, &active).trial_end, None);
    }
}
