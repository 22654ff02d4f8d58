-- Issue 20 (Stripe's real lifecycle).
--
-- `cancel_at`: when Stripe will cancel the subscription (set by `cancel_at`, or by `cancel_at_period_end` at the
-- period's end); shown in entitlements as `cancelAt`.
ALTER TABLE subscriptions ADD COLUMN cancel_at timestamptz;

-- Every billing period Stripe stated for an org's live (trialing, active, past_due) subscription, as mirrored. A
-- usage record whose `occurredAt` falls before the current period is filed under the stated period containing it
-- (CONTRACT §8), never under one derived by arithmetic.
CREATE TABLE subscription_periods (
    org_id                  bigint      NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    stripe_subscription_id  text        NOT NULL,
    period_start            timestamptz NOT NULL,
    period_end              timestamptz NOT NULL,
    stated_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stripe_subscription_id, period_start),
    CHECK (period_end > period_start)
);
CREATE INDEX subscription_periods_by_org ON subscription_periods (org_id, period_start);

INSERT INTO subscription_periods (org_id, stripe_subscription_id, period_start, period_end)
SELECT org_id, stripe_subscription_id, current_period_start, current_period_end
  FROM subscriptions
 WHERE status IN ('trialing', 'active', 'past_due')
ON CONFLICT DO NOTHING;

-- When the org was first given a trial: an org gets one trial, ever (CONTRACT §8).
ALTER TABLE orgs ADD COLUMN trial_granted_at timestamptz;
UPDATE orgs o SET trial_granted_at = s.first_trial
  FROM (SELECT org_id, min(created_at) AS first_trial FROM subscriptions WHERE trial_end IS NOT NULL GROUP BY org_id) s
 WHERE s.org_id = o.id;
