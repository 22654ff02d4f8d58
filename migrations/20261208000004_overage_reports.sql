-- Overage reported to Stripe's Billing Meters (CONTRACT §9), one row per org, metric and period: a kind of job on
-- the one queue (`meter_report`, ordered per org and metric — one Stripe customer, one meter — so at most one call is
-- in flight for each).
--
-- The proxies' write-back keeps `used` and `target` in step (common::store::overage::observe): `target` is the
-- overage Tollgate owes Stripe for the period, min(used, bound) - included, with the plan's included units, bound
-- and overage `price` (as PLANS_CONFIG names it) as seen while the period was current; it only grows. The control
-- plane's reporter owns the rest: the customer, the meter and its event name (resolved from the price), and the
-- report itself. `reported` is what Stripe acknowledged. A report sends `pending - reported` under
-- `pending_identifier`, both fixed before the call (deterministic: org, metric, period, pending), so a retry after a
-- crash or a 5xx repeats the same event and Stripe deduplicates it; `reported` moves to `pending` only once Stripe
-- answered.
CREATE TABLE overage_reports (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id              bigint      NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    metric              text        NOT NULL,
    period_start        timestamptz NOT NULL,
    period_end          timestamptz NOT NULL CHECK (period_end > period_start),
    price               text        NOT NULL CHECK (char_length(price) BETWEEN 1 AND 200),
    included            bigint      NOT NULL CHECK (included >= 0),
    bound               bigint      NOT NULL CHECK (bound >= included),
    used                bigint      NOT NULL DEFAULT 0 CHECK (used >= 0),
    target              bigint      NOT NULL DEFAULT 0 CHECK (target >= 0),
    reported            bigint      NOT NULL DEFAULT 0 CHECK (reported >= 0),
    pending             bigint,
    pending_identifier  text,
    status              text        NOT NULL DEFAULT 'pending'
                                    CHECK (status IN ('pending', 'failed', 'done', 'dead')),
    attempts            integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error          text,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_token         uuid,
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    done_at             timestamptz,
    UNIQUE (org_id, metric, period_start),
    CHECK ((pending IS NULL) = (pending_identifier IS NULL)),
    CHECK (pending IS NULL OR pending > reported),
    CHECK ((status = 'done') = (done_at IS NOT NULL)),
    CHECK ((lease_token IS NULL) = (lease_until IS NULL))
);
CREATE INDEX overage_reports_waiting_idx ON overage_reports (org_id, metric, period_start)
    WHERE status IN ('pending', 'failed');
CREATE INDEX overage_reports_due_idx ON overage_reports (next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX overage_reports_dead_idx ON overage_reports (created_at) WHERE status = 'dead';
