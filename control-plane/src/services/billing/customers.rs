//! 1.2 `customer.ensure`: at most one Stripe customer per org, also under concurrent calls (CONTRACT §8).

use super::{Billing, BillingError, org};
use crate::stripe::{IdempotencyKey, Intent, Op};
use std::collections::HashMap;
use stripe_core::customer::{CreateCustomer, SearchCustomer};
use tollgate_common::domain::OrgId;

impl Billing {
    /// The org's Stripe customer: ours if we have it, else the one Stripe has for `metadata.orgId`, else a new one.
    ///
    /// An org that has one gets it from one short query. Otherwise finding or making one is a billing change, run
    /// under the org's claim: a concurrent call gets 409 at once, so two calls never both create. The create's
    /// idempotency key derives from the caller's `intent`: a retry of the same intent (ours after a timeout, or the
    /// caller's with the same `Idempotency-Key`) replays the first customer instead of making another, and a new
    /// intent never replays an earlier one's answer (a 500 during a Stripe incident is not the next call's answer).
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn ensure_customer(
        &self,
        org_id: &OrgId,
        email: &str,
        intent: &Intent,
    ) -> Result<String, BillingError> {
        let org = org(&self.pg, org_id).await?;
        if let Some(customer) = org.customer {
            return Ok(customer);
        }
        self.changing(&org, "customer.ensure", async {
            // A change that ended between the read above and the claim may have linked one.
            if let Some(customer) = super::org(&self.pg, org_id).await?.customer {
                return Ok(customer);
            }
            let query = format!("metadata['orgId']:'{}'", org_id.as_str());
            let found = self
                .stripe
                .send(
                    Op::CustomerSearch,
                    &SearchCustomer::new(query).limit(2),
                    None,
                )
                .await?;
            let customer = match found.data.into_iter().next() {
                Some(existing) => existing.id.as_str().to_owned(),
                None => {
                    let request = CreateCustomer::new().email(email).metadata(HashMap::from([(
                        "orgId".to_owned(),
                        org_id.as_str().to_owned(),
                    )]));
                    let key = IdempotencyKey::for_intent(intent, Op::CustomerCreate, "");
                    self.stripe
                        .send(Op::CustomerCreate, &request, Some(&key))
                        .await?
                        .id
                        .as_str()
                        .to_owned()
                }
            };
            let mut tx = self.pg.begin().await?;
            let linked =
                tollgate_common::store::orgs::link_stripe_customer(&mut *tx, org.id, &customer)
                    .await?;
            let Some(name) = linked else {
                // The webhook worker linked it meanwhile (a subscription's `metadata.orgId`): that one is the org's.
                drop(tx);
                return super::org(&self.pg, org_id)
                    .await?
                    .customer
                    .ok_or(BillingError::UnknownOrg);
            };
            let import =
                crate::services::stigg::ops::customer(org_id, &customer, &name, Some(email));
            self.stigg.queue(&mut tx, org.id, &[import]).await?;
            tx.commit().await?;
            tracing::info!("stripe customer linked");
            Ok(customer)
        })
        .await
    }
}
