//! The per-org "billing change in progress" claim (`billing_claims`): how two changes of one org are kept apart
//! without holding a connection or a lock while Stripe is called.
//!
//! A change inserts the org's claim row in one statement (committed at once) and deletes it, by its token, when it
//! ends. A second change finds the row and is refused with 409 at once — it never waits, so it never holds a pooled
//! connection waiting either. The change runs within `TOLLGATE_BILLING_CHANGE_TIMEOUT_MS` and the claim expires
//! [`MARGIN`] after that, so a claim can outlive its holder only if the holder died (a crash, a lost replica); the
//! next change then takes the expired claim over (counted as `taken_over`). A change whose caller goes away
//! releases its claim in the background.

use super::{Billing, BillingError, OrgBilling};
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// How much longer than the change's timeout a claim lasts: the holder's own timer and PostgreSQL's clock are
/// different clocks, and the release needs a moment.
pub const MARGIN: Duration = Duration::from_secs(15);

/// The outcomes of `tollgate_cp_billing_claims_total`.
pub const OUTCOMES: [&str; 3] = ["taken", "taken_over", "busy"];

/// A held claim; released by [`Claim::release`], or in the background when dropped without it.
struct Claim {
    pg: PgPool,
    org_id: i64,
    token: Option<Uuid>,
}

impl Claim {
    async fn release(mut self) {
        if let Some(token) = self.token.take() {
            release(&self.pg, self.org_id, token).await;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Dropped without `release`: the change's future was cancelled (its caller disconnected).
        if let Some(token) = self.token.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (pg, org_id) = (self.pg.clone(), self.org_id);
            runtime.spawn(async move { release(&pg, org_id, token).await });
        }
    }
}

async fn release(pg: &PgPool, org_id: i64, token: Uuid) {
    let released = sqlx::query("DELETE FROM billing_claims WHERE org_id = $1 AND token = $2")
        .bind(org_id)
        .bind(token)
        .execute(pg)
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, org.internal_id = org_id, "could not release a billing claim; it expires by itself");
    }
}

impl Billing {
    /// Runs `change` as the org's one billing change in progress: takes the org's claim (409 at once when another
    /// change holds it), runs `change` within `TOLLGATE_BILLING_CHANGE_TIMEOUT_MS` (503 after), releases the claim.
    /// `change` must hold no connection across a Stripe call.
    pub(super) async fn changing<T>(
        &self,
        org: &OrgBilling,
        operation: &'static str,
        change: impl Future<Output = Result<T, BillingError>>,
    ) -> Result<T, BillingError> {
        let claim = self.claim(org, operation).await?;
        let outcome = tokio::time::timeout(self.settings.change_timeout, change).await;
        claim.release().await;
        outcome.unwrap_or_else(|_| {
            tracing::warn!(
                billing.operation = operation,
                "a billing change ran past its timeout and was abandoned"
            );
            Err(BillingError::TooSlow)
        })
    }

    async fn claim(
        &self,
        org: &OrgBilling,
        operation: &'static str,
    ) -> Result<Claim, BillingError> {
        let token = Uuid::new_v4();
        let lasts = self.settings.change_timeout + MARGIN;
        // `xmax = 0`: the row was inserted, not taken over from an expired claim.
        let taken: Option<bool> = sqlx::query_scalar(
            "INSERT INTO billing_claims (org_id, token, operation, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))
             ON CONFLICT (org_id) DO UPDATE
                SET token = EXCLUDED.token, operation = EXCLUDED.operation, claimed_at = now(),
                    expires_at = EXCLUDED.expires_at
              WHERE billing_claims.expires_at <= now()
             RETURNING xmax = 0",
        )
        .bind(org.id)
        .bind(token)
        .bind(operation)
        .bind(lasts.as_secs_f64())
        .fetch_optional(&self.pg)
        .await?;
        let outcome = match taken {
            Some(true) => "taken",
            Some(false) => {
                tracing::warn!(
                    billing.operation = operation,
                    "an expired billing claim was taken over (its holder died or hung)"
                );
                "taken_over"
            }
            None => "busy",
        };
        self.metrics.claims.with_label_values(&[outcome]).inc();
        if taken.is_none() {
            return Err(BillingError::ChangeInProgress);
        }
        Ok(Claim {
            pg: self.pg.clone(),
            org_id: org.id,
            token: Some(token),
        })
    }
}
