//! Which Stigg operations a change needs, and their inputs. Pure: the outbox stores what this returns.
//!
//! * A customer linked to the org → `importOneCustomer` (`customerId` = the org, `billingId` = the Stripe customer).
//! * A subscription first seen, or its plan changed → `importSubscriptionsBulk` (`billingId` and `subscriptionId` =
//!   the Stripe subscription, `planId` = the plan code): `updateOneSubscription` cannot change a plan.
//! * Its trial end, period, cancellation or pending plan changed → `updateOneSubscription` (by `refId`, as the SDK
//!   sends it), carrying the whole current state, so a later one supersedes an earlier one still queued.
//! * It ended (canceled, incomplete_expired) → `cancelSubscription`.

use crate::stigg::StiggOp;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tollgate_common::domain::{OrgId, SubscriptionState, SubscriptionStatus};

/// One operation to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The operation.
    pub op: StiggOp,
    /// What it is about (`cus_…` or `sub_…`).
    pub subject: String,
    /// Its GraphQL `input`.
    pub input: Value,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The customer import.
pub fn customer(org: &OrgId, customer: &str, name: &str, email: Option<&str>) -> Queued {
    let mut input = json!({"customerId": org.as_str(), "billingId": customer, "name": name});
    if let Some(email) = email {
        input["email"] = json!(email);
    }
    Queued {
        op: StiggOp::ImportCustomer,
        subject: customer.to_owned(),
        input,
    }
}

/// The subscription import (also for a plan change).
pub fn import(org: &OrgId, s: &SubscriptionState) -> Queued {
    Queued {
        op: StiggOp::ImportSubscription,
        subject: s.id.clone(),
        input: json!({"subscriptions": [{
            "customerId": org.as_str(),
            "subscriptionId": s.id,
            "billingId": s.id,
            "planId": s.plan.as_str(),
            "billingPeriod": "MONTHLY",
            "startDate": ts(s.period.start),
        }]}),
    }
}

/// The update carrying the subscription's current dates and pending plan.
pub fn update(s: &SubscriptionState) -> Queued {
    let cancellation = s.cancel_at_period_end.then(|| ts(s.period.end));
    Queued {
        op: StiggOp::UpdateSubscription,
        subject: s.id.clone(),
        input: json!({
            "refId": s.id,
            "billingPeriod": "MONTHLY",
            "trialEndDate": s.trial_end.map(ts),
            "cancellationDate": cancellation,
            "additionalMetaData": {
                "pendingPlanCode": s.pending.as_ref().map(|p| p.plan.as_str()),
                "pendingEffectiveAt": s.pending.as_ref().map(|p| ts(p.effective_at)),
                "currentPeriodEnd": ts(s.period.end),
            },
        }),
    }
}

/// The cancellation.
pub fn cancel(s: &SubscriptionState) -> Queued {
    Queued {
        op: StiggOp::CancelSubscription,
        subject: s.id.clone(),
        input: json!({"subscriptionRefId": s.id, "subscriptionCancellationTime": "IMMEDIATE"}),
    }
}

fn ended(status: SubscriptionStatus) -> bool {
    !status.holds_the_slot()
}

/// The operations that move Stigg from `before` to `after`, in order.
pub fn for_subscription(
    org: &OrgId,
    before: Option<&SubscriptionState>,
    after: &SubscriptionState,
) -> Vec<Queued> {
    let mut out = Vec::new();
    let Some(before) = before else {
        if !ended(after.status) {
            out.push(import(org, after));
            out.push(update(after));
        }
        return out;
    };
    if ended(after.status) {
        if !ended(before.status) {
            out.push(cancel(after));
        }
        return out;
    }
    if before.plan != after.plan || ended(before.status) {
        out.push(import(org, after));
    }
    let dates_or_pending = before.trial_end != after.trial_end
        || before.period != after.period
        || before.cancel_at_period_end != after.cancel_at_period_end
        || before.pending != after.pending;
    if dates_or_pending || !out.is_empty() {
        out.push(update(after));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use tollgate_common::domain::subscription::Pending;
    use tollgate_common::domain::{Period, PlanCode};

    fn at(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, 0, 0, 0)
            .single()
            .expect("instant")
    }

    fn state(status: SubscriptionStatus, plan: &str) -> SubscriptionState {
        SubscriptionState {
            id: "sub_1".into(),
            customer: "cus_1".into(),
            status,
            plan: PlanCode::parse(plan).expect("plan"),
            price_id: "price_1".into(),
            period: Period {
                start: at(1),
                end: at(15),
            },
            anchor: at(15),
            trial_end: Some(at(15)),
            cancel_at_period_end: false,
            cancel_at: None,
            canceled_at: None,
            schedule: None,
            pending: None,
        }
    }

    fn ops(v: &[Queued]) -> Vec<StiggOp> {
        v.iter().map(|q| q.op).collect()
    }

    #[test]
    fn each_change_maps_to_its_operation() {
        let org = OrgId::parse("org_a").expect("org");
        let trial = state(SubscriptionStatus::Trialing, "starter");
        assert_eq!(
            ops(&for_subscription(&org, None, &trial)),
            [StiggOp::ImportSubscription, StiggOp::UpdateSubscription]
        );
        assert!(
            for_subscription(&org, Some(&trial), &trial).is_empty(),
            "no change, nothing to send"
        );

        let mut upgraded = trial.clone();
        upgraded.plan = PlanCode::parse("growth").expect("plan");
        let q = for_subscription(&org, Some(&trial), &upgraded);
        assert_eq!(
            ops(&q),
            [StiggOp::ImportSubscription, StiggOp::UpdateSubscription]
        );
        assert_eq!(q[0].input["subscriptions"][0]["planId"], "growth");
        assert_eq!(q[0].input["subscriptions"][0]["billingId"], "sub_1");

        let mut scheduled = trial.clone();
        scheduled.pending = Some(Pending {
            plan: PlanCode::parse("starter").expect("plan"),
            effective_at: at(15),
        });
        let q = for_subscription(&org, Some(&trial), &scheduled);
        assert_eq!(ops(&q), [StiggOp::UpdateSubscription]);
        assert_eq!(
            q[0].input["additionalMetaData"]["pendingPlanCode"],
            "starter"
        );

        let mut canceling = trial.clone();
        canceling.cancel_at_period_end = true;
        let q = for_subscription(&org, Some(&trial), &canceling);
        assert_eq!(q[0].input["cancellationDate"], "2026-12-15T00:00:00Z");

        let mut canceled = trial.clone();
        canceled.status = SubscriptionStatus::Canceled;
        assert_eq!(
            ops(&for_subscription(&org, Some(&trial), &canceled)),
            [StiggOp::CancelSubscription]
        );
        assert!(for_subscription(&org, Some(&canceled), &canceled).is_empty());
        assert!(
            for_subscription(&org, None, &canceled).is_empty(),
            "never mirrored, nothing to cancel"
        );
    }
}
