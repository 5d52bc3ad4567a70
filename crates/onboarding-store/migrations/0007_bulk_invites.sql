-- Bulk invitations (POST /api/v1/bulk-invites, `onboard invite --file`): one job per uploaded
-- file and one row per line, with its outcome. Each row is one `Store::invite` with a user id
-- derived from (job, row), so a worker that resumes a half-done job after a restart finds the
-- rows it already applied instead of inviting twice; a re-uploaded file meets the username
-- registry and reports those rows as `duplicate`.
CREATE TABLE bulk_jobs (
    job_id      uuid PRIMARY KEY,
    -- The admin token (or `cli`) that uploaded the file: the actor of every invitation.
    actor_id    text        NOT NULL,
    format      text        NOT NULL CHECK (format IN ('csv', 'jsonl')),
    file_sha256 bytea       NOT NULL,
    total_rows  integer     NOT NULL,
    -- `running` while any row is `pending`, then `done`.
    status      text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE TABLE bulk_job_rows (
    job_id   uuid    NOT NULL REFERENCES bulk_jobs (job_id) ON DELETE CASCADE,
    -- 1-based line number in the file (the CSV header is line 1).
    line     integer NOT NULL,
    -- The row's fields as parsed (username, email, domain, locale); NULL when the line was unreadable.
    input    jsonb,
    status   text    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'created', 'duplicate', 'invalid', 'failed')),
    user_id  uuid,
    reason   text,
    PRIMARY KEY (job_id, line)
);

CREATE INDEX bulk_job_rows_pending ON bulk_job_rows (job_id, line) WHERE status = 'pending';
CREATE INDEX bulk_jobs_running ON bulk_jobs (created_at) WHERE status = 'running';
