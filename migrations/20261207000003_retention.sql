-- Nothing grows without bound (issue 19): finished rows are purged after a retention (`jobs::purge`), and Stigg
-- provisioning queues an operation only when its content is new.

-- A usage event is kept while its period can still be recorded to (`usage/record` refuses an `occurredAt` whose
-- period ended more than the retention ago), so the purge needs the end of the period the event counted toward.
-- Existing rows take the latest end of a counter with their period key, else a conservative bound (two months
-- after the period key's month began: later than any monthly period starting in it).
ALTER TABLE usage_events ADD COLUMN period_end timestamptz;
UPDATE usage_events e
   SET period_end = coalesce(
           (SELECT max(c.period_end) FROM usage_counters c
             WHERE c.org_id = e.org_id AND c.metric = e.metric AND c.period_key = e.period_key),
           (e.period_key || '-01T00:00:00Z')::timestamptz + interval '2 months');
ALTER TABLE usage_events ALTER COLUMN period_end SET NOT NULL;

-- The purge's predicates, one index each, so a batch reads only what it deletes.
CREATE INDEX usage_events_period_end_idx ON usage_events (period_end);
CREATE INDEX stripe_events_processed_idx ON stripe_events (processed_at)
    WHERE status IN ('applied', 'ignored');
CREATE INDEX stigg_outbox_finished_idx ON stigg_outbox (done_at)
    WHERE status IN ('done', 'skipped', 'superseded');

-- Queueing compares an operation with the newest row of the same operation on the same subject.
CREATE INDEX stigg_outbox_subject_idx ON stigg_outbox (org_id, subject, operation, id);
