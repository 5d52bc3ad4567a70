-- Answers to admin requests sent with an Idempotency-Key, so a retried request gets the first
-- answer instead of inviting or mailing twice. Scoped per admin token.
CREATE TABLE idempotency_keys
(
    token_id     text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status       integer,
    response     jsonb,
    location     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_id, key)
);
