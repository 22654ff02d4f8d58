-- The worker coalesces a backlog: having read an object back from Stripe, it settles the other waiting events
-- about the same object that arrived before that read (issue 10's drain). They are found by object id.
CREATE INDEX stripe_events_object_waiting_idx ON stripe_events (object_id)
    WHERE status IN ('pending', 'failed');
