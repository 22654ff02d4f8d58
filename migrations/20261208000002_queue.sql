-- One durable queue (control-plane `queue` module): every kind of job has the same waiting states (`pending`,
-- `failed` = retrying with backoff), the same terminal failure (`dead`: failed TOLLGATE_QUEUE_MAX_ATTEMPTS times,
-- never retried, replayable by the operator) and the same claim (a lease; only its holder records the outcome).
ALTER TABLE stripe_events DROP CONSTRAINT stripe_events_status_check;
ALTER TABLE stripe_events ADD CONSTRAINT stripe_events_status_check
    CHECK (status IN ('pending', 'processing', 'applied', 'ignored', 'failed', 'dead'));

ALTER TABLE stigg_outbox DROP CONSTRAINT stigg_outbox_status_check;
ALTER TABLE stigg_outbox ADD CONSTRAINT stigg_outbox_status_check
    CHECK (status IN ('pending', 'done', 'failed', 'skipped', 'superseded', 'dead'));
-- Stigg deliveries are leased like Stripe events: no transaction is held open across the call to Stigg.
ALTER TABLE stigg_outbox
    ADD COLUMN lease_token uuid,
    ADD COLUMN lease_until timestamptz,
    ADD CONSTRAINT stigg_outbox_lease_complete CHECK ((lease_token IS NULL) = (lease_until IS NULL));

-- The dead jobs an operator looks for, and the gauges' count of them.
CREATE INDEX stripe_events_dead_idx ON stripe_events (received_at) WHERE status = 'dead';
CREATE INDEX stigg_outbox_dead_idx ON stigg_outbox (created_at) WHERE status = 'dead';
