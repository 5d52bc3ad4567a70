-- The admin console (docs/console.md, docs/adr/0028).
--
-- admin_sessions: one row per signed-in browser. The cookie holds 32 random bytes; the table
-- keeps only their SHA-256, so a copy of the table signs nobody in. The row names the admin
-- token that signed in (its id, never the token): the token's scopes are read from the
-- configuration on every request, so a token revoked or narrowed there takes effect at once.
-- A session ends at `expires_at` (absolute), after `idle_until` passes without a request, or
-- when its admin signs out (the row is deleted).
CREATE TABLE admin_sessions
(
    id_sha256  bytea PRIMARY KEY CHECK (length(id_sha256) = 32),
    token_id   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    idle_until timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX admin_sessions_expiry ON admin_sessions (expires_at);

-- audit_verifications: what each `onboard audit verify` found, so the console's overview can say
-- when the log was last checked and with which result ("never" when the table is empty).
CREATE TABLE audit_verifications
(
    id            bigserial PRIMARY KEY,
    ran_at        timestamptz NOT NULL DEFAULT now(),
    events        bigint      NOT NULL CHECK (events >= 0),
    -- The head digest verify printed (`<position>:<hex>`), NULL for an empty log.
    head          text,
    findings      integer     NOT NULL CHECK (findings >= 0),
    -- `--expect` was given and its head is not in the log.
    expected_head_missing boolean NOT NULL DEFAULT false
);
