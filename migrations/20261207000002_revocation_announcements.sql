-- A revocation is announced once (issue 19). `announce_due_at` is set while a revoked key's announcement is owed:
-- a revoke claims it by moving it a lease into the future, clears it once Redis took the announcement, and moves
-- it back to now when the announce failed so that a repeat (or the sweep) announces again. NULL: nothing owed.
-- Keys revoked before this migration were announced then.
ALTER TABLE api_keys ADD COLUMN announce_due_at timestamptz,
    ADD CONSTRAINT api_keys_announce_revoked CHECK (announce_due_at IS NULL OR revoked_at IS NOT NULL);

-- The sweep finds owed announcements without reading the table.
CREATE INDEX api_keys_announce_due_idx ON api_keys (announce_due_at) WHERE announce_due_at IS NOT NULL;
