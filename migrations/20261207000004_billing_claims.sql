-- One tenant cannot starve the others (issue 19): nothing holds a pooled connection or a lock across a Stripe call.

-- "A billing change for this org is in progress": taken and committed in a short statement before Stripe is called,
-- deleted (by its token) when the change ends. A second change finds it and answers 409 at once. It expires a little
-- after the longest a change may take (TOLLGATE_BILLING_CHANGE_TIMEOUT_MS), so a replica that died holding one does
-- not wedge the org: the next change takes the expired claim over.
CREATE TABLE billing_claims (
    org_id      bigint      PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    token       uuid        NOT NULL,
    operation   text        NOT NULL CHECK (char_length(operation) BETWEEN 1 AND 64),
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CHECK (expires_at > claimed_at)
);

-- Reads of Stripe objects, ordered: a ticket from this sequence is taken before an object is read back from Stripe,
-- and the mirror of what was read is written only if no read with a later ticket has been written already. So a
-- stale read (one that started before another read that was already mirrored) never overwrites a newer one, without
-- any lock held across the read.
CREATE SEQUENCE stripe_read_seq;
CREATE TABLE stripe_reads (
    object_id  text        PRIMARY KEY CHECK (char_length(object_id) BETWEEN 1 AND 255),
    read_seq   bigint      NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);

-- The webhook worker's lease on the event it processes: claimed in a short statement (its next attempt moves to the
-- lease's end, so it is invisible to other workers meanwhile), read back from Stripe with no connection held, then
-- marked processed only by the holder of the lease. A worker that dies leaves an event that becomes due again when
-- its lease ends.
ALTER TABLE stripe_events
    ADD COLUMN lease_token uuid,
    ADD COLUMN lease_until timestamptz,
    ADD CONSTRAINT stripe_events_lease_complete CHECK ((lease_token IS NULL) = (lease_until IS NULL));
