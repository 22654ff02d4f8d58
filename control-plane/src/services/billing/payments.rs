//! 2.1 SetupIntents, 2.2 the default payment method, 6.2 the customer portal.

use super::{Billing, BillingError, org};
use crate::stripe::{IdempotencyKey, Intent, Op, StripeError};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_billing::invoice::{ListInvoice, PayInvoice};
use stripe_core::customer::{UpdateCustomer, UpdateCustomerInvoiceSettings};
use stripe_core::setup_intent::{CreateSetupIntent, CreateSetupIntentUsage};
use stripe_payment::payment_method::{AttachPaymentMethod, RetrievePaymentMethod};
use stripe_shared::InvoiceStatus;
use tollgate_common::domain::{OrgId, SubscriptionStatus};
use tollgate_common::store::subscriptions as store;

impl Billing {
    /// 2.1: a SetupIntent for collecting a card to charge later (`usage: off_session`); its client secret.
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn create_setup_intent(
        &self,
        org_id: &OrgId,
        intent: &Intent,
    ) -> Result<String, BillingError> {
        let org = org(&self.pg, org_id).await?;
        let customer = org.customer()?;
        let request = CreateSetupIntent::new()
            .customer(customer)
            .usage(CreateSetupIntentUsage::OffSession);
        // A SetupIntent charges nothing: each intent makes one; retries of the intent share the key.
        let key = IdempotencyKey::for_intent(intent, Op::SetupIntentCreate, "");
        let intent = self
            .stripe
            .send(Op::SetupIntentCreate, &request, Some(&key))
            .await?;
        intent.client_secret.ok_or_else(|| {
            BillingError::Unmirrorable("the SetupIntent has no client secret".to_owned())
        })
    }

    /// 2.2: attaches `payment_method` to the org's customer and makes it the default for invoices and renewals.
    /// An unknown payment method, or one attached to another customer, is a 4xx naming `paymentMethodId`. A
    /// billing change: under the org's claim, no connection held across Stripe.
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn set_default_payment_method(
        &self,
        org_id: &OrgId,
        payment_method: &str,
        intent: &Intent,
    ) -> Result<(), BillingError> {
        let org = org(&self.pg, org_id).await?;
        let customer = org.customer()?.to_owned();
        self.changing(&org, "default-method.set", async {
            let pm = self
                .stripe
                .retrieve(
                    Op::PaymentMethodRetrieve,
                    &RetrievePaymentMethod::new(payment_method),
                )
                .await?
                .ok_or_else(|| BillingError::NotFound {
                    field: "paymentMethodId",
                    detail: "no such payment method in Stripe".to_owned(),
                })?;
            match pm.customer.as_ref().map(|c| c.id().as_str().to_owned()) {
                Some(owner) if owner != customer => {
                    return Err(BillingError::invalid(
                        "paymentMethodId",
                        "belongs to another customer",
                    ));
                }
                Some(_) => {}
                None => {
                    let key = IdempotencyKey::for_intent(intent, Op::PaymentMethodAttach, "");
                    self.stripe
                        .send(
                            Op::PaymentMethodAttach,
                            &AttachPaymentMethod::new(payment_method).customer(customer.as_str()),
                            Some(&key),
                        )
                        .await
                        .map_err(|e| match e {
                            StripeError::Refused { message, .. } => {
                                BillingError::invalid("paymentMethodId", message)
                            }
                            other => other.into(),
                        })?;
                }
            }
            let request = UpdateCustomer::new(customer.as_str()).invoice_settings(
                UpdateCustomerInvoiceSettings {
                    default_payment_method: Some(payment_method.to_owned()),
                    ..UpdateCustomerInvoiceSettings::new()
                },
            );
            // Keyed by the intent, never by the inputs: A, then B, then A again are three intents, and the third
            // must not replay the first's answer (which would leave Stripe on B).
            let key = IdempotencyKey::for_intent(intent, Op::CustomerUpdate, "default_payment_method");
            // Stripe's answer is a read of the customer: its ticket orders it against the worker's reads.
            let ticket = store::read_ticket(&self.pg).await?;
            self.stripe
                .send(Op::CustomerUpdate, &request, Some(&key))
                .await?;
            let mut tx = self.pg.begin().await?;
            if store::newer_read(&mut tx, &customer, ticket).await? {
                sqlx::query(
                    "UPDATE orgs SET stripe_default_payment_method = $2, updated_at = now() WHERE id = $1",
                )
                .bind(org.id)
                .bind(payment_method)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            tracing::info!("default payment method set");
            self.pay_what_is_owed(org.id, payment_method, intent).await
        })
        .await
    }

    /// After a new default payment method: while the org's subscription is `past_due` or `incomplete`, its open
    /// invoices are paid with it now (`POST /v1/invoices/{id}/pay`), oldest first, and the subscription mirrored.
    /// A declined card is a 402 (the method stays the default; Stripe's retries go on).
    async fn pay_what_is_owed(
        &self,
        org_id: i64,
        payment_method: &str,
        intent: &Intent,
    ) -> Result<(), BillingError> {
        let owing = {
            let mut conn = self.pg.acquire().await?;
            store::current(&mut conn, org_id).await?
        }
        .filter(|s| {
            matches!(
                s.state.status,
                SubscriptionStatus::PastDue | SubscriptionStatus::Incomplete
            )
        });
        let Some(owing) = owing else {
            return Ok(());
        };
        let subscription = owing.state.id.as_str();
        let mut open = self
            .stripe
            .send(
                Op::InvoiceList,
                &ListInvoice::new()
                    .subscription(subscription)
                    .status(InvoiceStatus::Open)
                    .limit(100),
                None,
            )
            .await?
            .data;
        open.sort_by_key(|invoice| invoice.created);
        for invoice in open {
            let Some(id) = invoice.id.as_ref().map(|id| id.as_str().to_owned()) else {
                continue;
            };
            // One payment per invoice within this intent: a retry of the call replays Stripe's answer; a new
            // intent (the customer tries again) is a new attempt.
            let key = IdempotencyKey::for_intent(intent, Op::InvoicePay, id.as_str());
            let paid = self
                .stripe
                .send(
                    Op::InvoicePay,
                    &PayInvoice::new(id.as_str()).payment_method(payment_method),
                    Some(&key),
                )
                .await;
            match paid {
                Ok(_) => tracing::info!("open invoice paid with the new payment method"),
                Err(e) => {
                    // Mirror whatever Stripe says now, then report the decline.
                    self.sync_subscription(subscription).await?;
                    return Err(e.into());
                }
            }
        }
        self.sync_subscription(subscription).await?;
        Ok(())
    }

    /// 6.2: a customer portal session returning to `TOLLGATE_BILLING_RETURN_URL`; its URL.
    #[tracing::instrument(skip_all, fields(org.id = %org_id))]
    pub async fn create_portal_session(
        &self,
        org_id: &OrgId,
        intent: &Intent,
    ) -> Result<String, BillingError> {
        let org = org(&self.pg, org_id).await?;
        let customer = org.customer()?;
        let mut request = CreateBillingPortalSession::new()
            .customer(customer)
            .return_url(self.settings.return_url.as_str());
        // A saved configuration (TOLLGATE_STRIPE_PORTAL_CONFIGURATION) decides what customers may change there.
        if let Some(configuration) = &self.settings.portal_configuration {
            request = request.configuration(configuration.as_str());
        }
        let key = IdempotencyKey::for_intent(intent, Op::PortalSessionCreate, "");
        Ok(self
            .stripe
            .send(Op::PortalSessionCreate, &request, Some(&key))
            .await?
            .url)
    }
}
