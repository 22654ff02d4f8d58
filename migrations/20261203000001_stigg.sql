-- The Stigg mirror's transactional outbox (issue 11): the operations are Stigg's own (importOneCustomer,
-- importSubscriptionsBulk, updateOneSubscription, cancelSubscription), queued in the transaction that changes what
-- they mirror, and delivered in order per org.
ALTER TABLE stigg_outbox DROP CONSTRAINT stigg_outbox_operation_check;
ALTER TABLE stigg_outbox ADD CONSTRAINT stigg_outbox_operation_check
    CHECK (operation IN ('import_customer', 'import_subscription', 'update_subscription', 'cancel_subscription'));
-- skipped: Stigg is not configured; superseded: a later update of the same subscription carries its state.
ALTER TABLE stigg_outbox DROP CONSTRAINT stigg_outbox_status_check;
ALTER TABLE stigg_outbox ADD CONSTRAINT stigg_outbox_status_check
    CHECK (status IN ('pending', 'done', 'failed', 'skipped', 'superseded'));
ALTER TABLE stigg_outbox DROP CONSTRAINT stigg_outbox_check;
ALTER TABLE stigg_outbox ADD CONSTRAINT stigg_outbox_done_check
    CHECK ((status IN ('done', 'skipped', 'superseded')) = (done_at IS NOT NULL));
-- What the operation is about (a Stripe customer or subscription id), for coalescing.
ALTER TABLE stigg_outbox ADD COLUMN subject text NOT NULL DEFAULT '' CHECK (char_length(subject) <= 255);
-- The head of each org's queue is found by this index; delivery takes only heads, so an org's operations go in order.
CREATE INDEX stigg_outbox_org_queue_idx ON stigg_outbox (org_id, id) WHERE status IN ('pending', 'failed');

-- When the org was last provisioned in Stigg (1.4).
ALTER TABLE orgs ADD COLUMN stigg_provisioned_at timestamptz;
