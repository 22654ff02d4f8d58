-- Idempotency-Key on control-plane POSTs (issue 20, defect 5), Stripe's way
-- (https://docs.stripe.com/api/idempotent_requests): the first request with a key runs and its final answer is kept
-- for 24 h; the same key with the same request replays that answer, with another request it is a 409. Keys are
-- scoped per principal (`scope`: the operator, a user in an org, an API key), never shared between callers.
--
-- A row is taken (status NULL, `lease_until` set) in one short statement before the request runs, so a concurrent
-- request with the same key finds it and gets 409 at once. Only final answers are stored (2xx and deterministic 4xx);
-- any other answer (5xx, 429, a busy 409, a dropped request) deletes the row by its token, so the key is free again.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL CHECK (char_length(scope) BETWEEN 1 AND 300),
    key          text        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the method, the path and the raw body.
    fingerprint  bytea       NOT NULL,
    token        uuid        NOT NULL,
    status       smallint,
    content_type text,
    body         bytea,
    lease_until  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key),
    CHECK ((status IS NULL) = (body IS NULL))
);

-- The retention purge deletes keys older than 24 h.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
