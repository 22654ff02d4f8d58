//! 6.1 invoices, newest first, paged by the last id (CONTRACT §8).

use super::{Billing, BillingError, instant, org};
use crate::stripe::Op;
use chrono::{DateTime, Utc};
use stripe_billing::invoice::ListInvoice;
use tollgate_common::domain::OrgId;

/// One invoice as listed.
#[derive(Debug, Clone)]
pub struct InvoiceView {
    /// `in_…`.
    pub id: String,
    /// Minor units.
    pub total: i64,
    /// Lower-case ISO currency.
    pub currency: String,
    /// `draft`, `open`, `paid`, `uncollectible`, `void`.
    pub status: String,
    /// The hosted invoice page.
    pub url: Option<String>,
    /// When Stripe created it.
    pub created: DateTime<Utc>,
}

impl Billing {
    /// A page of the org's invoices, newest first: up to `limit`, after `cursor` (the last id of the page before).
    pub async fn list_invoices(
        &self,
        org_id: &OrgId,
        cursor: Option<&str>,
        limit: u8,
    ) -> Result<Vec<InvoiceView>, BillingError> {
        let org = org(&self.pg, org_id).await?;
        let customer = org.customer()?;
        let mut request = ListInvoice::new()
            .customer(customer)
            .limit(i64::from(limit));
        if let Some(cursor) = cursor {
            request = request.starting_after(cursor);
        }
        let page = match self.stripe.send(Op::InvoiceList, &request, None).await {
            Ok(page) => page,
            Err(e) if e.is_missing() && cursor.is_some() => {
                return Err(BillingError::NotFound {
                    field: "cursor",
                    detail: "no such invoice".to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(page
            .data
            .into_iter()
            .filter_map(|invoice| {
                Some(InvoiceView {
                    id: invoice.id?.as_str().to_owned(),
                    total: invoice.total,
                    currency: invoice.currency.to_string().to_ascii_lowercase(),
                    status: invoice
                        .status
                        .map_or_else(|| "draft".to_owned(), |s| s.as_str().to_owned()),
                    url: invoice.hosted_invoice_url,
                    created: instant(invoice.created),
                })
            })
            .collect())
    }
}
