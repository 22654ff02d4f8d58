-- Billing with Stripe as the source of truth (issue 10).

-- A counter belongs to one billing period, identified by the period's start: a trial that ends in the month it
-- began is followed by a period with the same `period_key`, and that period starts at 0 because it is a different
-- counter — nothing is reset, so the automatic rollover and Stripe's renewal can never reset it twice.
ALTER TABLE usage_counters DROP CONSTRAINT usage_counters_pkey;
ALTER TABLE usage_counters ADD PRIMARY KEY (org_id, metric, period_start);
CREATE INDEX usage_counters_org_period_key_idx ON usage_counters (org_id, period_key);

-- What the subscription is billed at, and a downgrade scheduled in Stripe for the end of the period.
ALTER TABLE subscriptions
    ADD COLUMN stripe_price_id       text        NOT NULL CHECK (stripe_price_id ~ '^price_[A-Za-z0-9_]+$'),
    -- Stripe's billing_cycle_anchor: later periods start on it, monthly (after a trial, the trial's end).
    ADD COLUMN billing_cycle_anchor  timestamptz NOT NULL,
    ADD COLUMN stripe_schedule_id    text        CHECK (stripe_schedule_id ~ '^sub_sched_[A-Za-z0-9_]+$'),
    ADD COLUMN pending_effective_at  timestamptz,
    ADD COLUMN canceled_at           timestamptz,
    -- When Tollgate first saw the current period (Stripe's clock may be ahead of ours: usage from then on counts
    -- toward it).
    ADD COLUMN period_observed_at    timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT subscriptions_pending_complete
        CHECK ((pending_plan_code IS NULL) = (pending_effective_at IS NULL));
CREATE INDEX subscriptions_customer_idx ON subscriptions (stripe_customer_id);

-- The customer's default payment method, as Stripe last said (`customer.updated`).
ALTER TABLE orgs
    ADD COLUMN stripe_default_payment_method text CHECK (stripe_default_payment_method ~ '^(pm|card|src)_[A-Za-z0-9_]+$');

-- Webhook events keep the object they concern, so processing can re-read it from Stripe without parsing again.
ALTER TABLE stripe_events
    ADD COLUMN object_type text NOT NULL DEFAULT '' CHECK (char_length(object_type) <= 100),
    ADD COLUMN object_id   text NOT NULL DEFAULT '' CHECK (char_length(object_id) <= 255);
CREATE INDEX stripe_events_received_idx ON stripe_events (received_at);
