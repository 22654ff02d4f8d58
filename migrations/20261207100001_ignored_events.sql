-- Issue 20, defect 1: events that can never be mirrored end `ignored` with a reason (terminal, never retried,
-- listed for the operator by GET /api/admin/webhooks.list, replayable by 8.1). The reasons are
-- tollgate_common::domain::IgnoreReason; a reason is set only on an `ignored` event (and Tollgate always sets one).
ALTER TABLE stripe_events
    ADD COLUMN ignored_reason text
        CHECK (ignored_reason IN ('unhandled_type', 'foreign_customer', 'unknown_price', 'object_deleted',
                                  'no_subscription'));

-- Events ignored before this column existed were ignored for their type.
UPDATE stripe_events SET ignored_reason = 'unhandled_type' WHERE status = 'ignored';

ALTER TABLE stripe_events
    ADD CONSTRAINT stripe_events_reason_only_when_ignored CHECK (ignored_reason IS NULL OR status = 'ignored');

-- The operator's listing pages by status, newest first. Partial: the events an operator looks for (failed and
-- ignored ones) are few, and an applied event (nearly all of them) never enters it, so intake and the workers' updates
-- pay nothing for it; listing applied or pending events walks stripe_events_received_idx instead.
CREATE INDEX stripe_events_status_received_idx ON stripe_events (status, received_at DESC, event_id DESC)
    WHERE status IN ('failed', 'ignored');
