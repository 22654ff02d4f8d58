-- Tollgate's schema: everything the product stores in PostgreSQL.
-- Constraints make bad states unrepresentable; every hot lookup has an index.

-- Tenants. `clerk_org_id` is the public handle (CONTRACT §3); `id` the internal key everything references.
CREATE TABLE orgs (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    clerk_org_id        text        NOT NULL UNIQUE CHECK (clerk_org_id ~ '^org_[A-Za-z0-9_]{1,64}$'),
    name                text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    owner_user_id       text        NOT NULL CHECK (char_length(owner_user_id) BETWEEN 1 AND 200),
    stripe_customer_id  text        UNIQUE CHECK (stripe_customer_id ~ '^cus_[A-Za-z0-9]+$'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Target of subscriptions' composite key: a subscription's customer is its org's customer.
    UNIQUE (id, stripe_customer_id)
);

-- Org API keys: only the SHA-256 of a key is stored, plus a short prefix for display.
CREATE TABLE api_keys (
    id            uuid        PRIMARY KEY,
    org_id        bigint      NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name          text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    key_hash      bytea       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    prefix        text        NOT NULL CHECK (prefix ~ '^tg_[A-Za-z0-9]{8}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id, created_at DESC);

-- Stripe subscriptions, mirrored from Stripe (the source of truth). At most one live subscription per org.
CREATE TABLE subscriptions (
    id                      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id                  bigint      NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    stripe_customer_id      text        NOT NULL,
    stripe_subscription_id  text        NOT NULL UNIQUE CHECK (stripe_subscription_id ~ '^sub_[A-Za-z0-9]+$'),
    status                  text        NOT NULL CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing',
                                            'active', 'past_due', 'canceled', 'unpaid', 'paused')),
    plan_code               text        NOT NULL CHECK (plan_code ~ '^[a-z][a-z0-9_]{0,31}$'),
    pending_plan_code       text        CHECK (pending_plan_code ~ '^[a-z][a-z0-9_]{0,31}$'),
    current_period_start    timestamptz NOT NULL,
    current_period_end      timestamptz NOT NULL,
    trial_end               timestamptz,
    cancel_at_period_end    boolean     NOT NULL DEFAULT false,
    -- `created` of the newest Stripe event applied, so an older event arriving late cannot roll state back.
    stripe_updated_at       timestamptz NOT NULL DEFAULT now(),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (current_period_end > current_period_start),
    CHECK (pending_plan_code IS DISTINCT FROM plan_code),
    FOREIGN KEY (org_id, stripe_customer_id) REFERENCES orgs (id, stripe_customer_id)
);
CREATE UNIQUE INDEX subscriptions_one_live_per_org ON subscriptions (org_id)
    WHERE status NOT IN ('canceled', 'incomplete_expired');

-- Usage per org, metric and billing period. Redis holds the live value; this is the durable copy the proxy
-- writes back. `epoch` rises on every admin reset: a write-back carrying an older epoch is stale and ignored,
-- so a reset is never undone by a late flush.
CREATE TABLE usage_counters (
    org_id        bigint      NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    metric        text        NOT NULL CHECK (metric ~ '^[a-z][a-z0-9_]{0,63}$'),
    period_key    text        NOT NULL CHECK (period_key ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    used          bigint      NOT NULL DEFAULT 0 CHECK (used >= 0),
    epoch         bigint      NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, metric, period_key),
    CHECK (period_end > period_start)
);
CREATE INDEX usage_counters_period_idx ON usage_counters (period_key);

-- Recorded usage (story 4.2). `request_id` is unique per org; `response` is the exact body first returned, so a
-- repeat gets the identical bytes.
CREATE TABLE usage_events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id       bigint      NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    request_id   text        NOT NULL CHECK (char_length(request_id) BETWEEN 1 AND 200),
    metric       text        NOT NULL CHECK (metric ~ '^[a-z][a-z0-9_]{0,63}$'),
    value        bigint      NOT NULL CHECK (value > 0),
    period_key   text        NOT NULL CHECK (period_key ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    occurred_at  timestamptz NOT NULL,
    response     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, request_id)
);

-- Stripe webhook events, stored on intake and applied exactly once by the worker.
CREATE TABLE stripe_events (
    event_id         text        PRIMARY KEY CHECK (event_id ~ '^evt_[A-Za-z0-9_]+$'),
    event_type       text        NOT NULL CHECK (char_length(event_type) BETWEEN 1 AND 100),
    payload          jsonb       NOT NULL,
    stripe_created   timestamptz NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'processing', 'applied', 'ignored', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    received_at      timestamptz NOT NULL DEFAULT now(),
    processed_at     timestamptz,
    CHECK ((status IN ('applied', 'ignored')) = (processed_at IS NOT NULL))
);
CREATE INDEX stripe_events_due_idx ON stripe_events (next_attempt_at)
    WHERE status IN ('pending', 'failed');

-- Outbox for the Stigg mirror (Stripe → database → Stigg): written in the same transaction as the change it
-- mirrors, delivered by a worker, retried until done. `dedup_key` makes enqueueing idempotent.
CREATE TABLE stigg_outbox (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id           bigint      NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    operation        text        NOT NULL CHECK (operation IN ('provision_customer', 'provision_subscription',
                                     'update_subscription', 'cancel_subscription')),
    payload          jsonb       NOT NULL,
    dedup_key        text        NOT NULL UNIQUE,
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    CHECK ((status = 'done') = (done_at IS NOT NULL))
);
CREATE INDEX stigg_outbox_due_idx ON stigg_outbox (next_attempt_at) WHERE status IN ('pending', 'failed');
