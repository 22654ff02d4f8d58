-- Usage alerts and outgoing webhooks (CONTRACT §9).
--
-- An org's webhook endpoint (one per org: `endpoints.set` replaces it and issues a new secret). The signing secret is
-- stored encrypted (AES-256-GCM with TOLLGATE_WEBHOOK_SECRETS_KEY; nonce || ciphertext): it must be recoverable to
-- sign, and a database dump alone does not give it away.
CREATE TABLE webhook_endpoints (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id         text        NOT NULL UNIQUE CHECK (public_id ~ '^we_[A-Za-z0-9]{1,64}$'),
    org_id            bigint      NOT NULL UNIQUE REFERENCES orgs (id) ON DELETE CASCADE,
    url               text        NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2048),
    events            text[]      NOT NULL CHECK (cardinality(events) >= 1),
    secret_sealed     bytea       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- A usage threshold an org crossed in a period: one row per (org, metric, period, threshold), so it is announced
-- once, whoever saw it first (every writer of counters inserts ON CONFLICT DO NOTHING). Deleted when usage falls
-- back under it (a reset, a plan change): re-armed. `threshold` is a percentage of the included units ('50') or
-- 'bound'.
CREATE TABLE usage_alerts (
    id            bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    org_id        bigint      NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    metric        text        NOT NULL,
    period_start  timestamptz NOT NULL,
    threshold     text        NOT NULL CHECK (threshold ~ '^([0-9]{1,4}|bound)$'),
    at_units      bigint      NOT NULL CHECK (at_units >= 0),
    used          bigint      NOT NULL CHECK (used >= 0),
    crossed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, metric, period_start, threshold)
);

-- Outgoing webhook deliveries: a kind of job on the one queue (`webhook_delivery`, ordered per endpoint). The
-- message id (`webhook-id`) names the alert, so a retry is recognisably the same message.
CREATE TABLE webhook_deliveries (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id      bigint      NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id       text        NOT NULL CHECK (char_length(message_id) BETWEEN 1 AND 100),
    event_type       text        NOT NULL CHECK (event_type IN ('usage.threshold.crossed', 'usage.bound.reached')),
    payload          jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'failed', 'done', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    response_status  integer,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_token      uuid,
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    UNIQUE (endpoint_id, message_id),
    CHECK ((status = 'done') = (done_at IS NOT NULL)),
    CHECK ((lease_token IS NULL) = (lease_until IS NULL))
);
CREATE INDEX webhook_deliveries_waiting_idx ON webhook_deliveries (endpoint_id, id)
    WHERE status IN ('pending', 'failed');
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX webhook_deliveries_dead_idx ON webhook_deliveries (created_at) WHERE status = 'dead';
-- The purge of delivered ones (control-plane services::retention).
CREATE INDEX webhook_deliveries_done_idx ON webhook_deliveries (done_at) WHERE status = 'done';
