-- Which worker's session holds a mail's claim (docs/adr/0034). A worker claims a due row from a
-- PostgreSQL connection of its own and records that connection's backend pid here; the claim
-- lasts while that session does. When the worker dies, PostgreSQL ends its session, and another
-- worker takes the mail over once the claim is `claimed_at` plus a grace old, instead of waiting
-- for the whole lease in `next_attempt_at`.
ALTER TABLE mail_retries
    ADD COLUMN claimed_by integer,
    ADD COLUMN claimed_at timestamptz;
