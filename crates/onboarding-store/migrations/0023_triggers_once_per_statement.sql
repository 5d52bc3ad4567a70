-- The append's triggers run once per statement where they can (docs/adr/0046).
--
-- The appender writes a batch of commands as one `INSERT INTO events … unnest`. Until now every
-- row of it fired, one after the other: the advisory lock and a read of the newest hash (the
-- chain, 0008), a copy into the outbox and a `pg_notify` (0001), and the projection into
-- `account_states` (0011, 0014, 0016), which inserted an invitation's row and updated it again
-- for the invitation's code, after which the appender updated it a third time with the fields it
-- had sealed. Now:
--
-- 1. `events_chain_head`, a BEFORE INSERT trigger FOR EACH STATEMENT, takes the append lock and
--    reads the newest hash once, before the statement's first row. `events_append`, still one
--    per row (it sets the row's position, time and hashes), chains each row to the one before
--    it through the transaction-local setting `onboard.chain_head`, which the statement trigger
--    has just set and each row moves on. Every INSERT statement fires the statement trigger
--    first, so no row is chained to a head that another statement left; a rolled-back
--    savepoint rolls the setting back with its rows. The lock is taken before any row is
--    written, as before, and held to the commit: position order is still commit order.
-- 2. `events_to_outbox` copies the statement's events into the outbox in one INSERT, in
--    position order (so the outbox ids, drawn under the lock, stay commit-ordered and in log
--    order), and notifies the relay once.
-- 3. `project_account_state` folds the statement's events into `account_states` in one pass:
--    one INSERT for the accounts the statement invites, one UPDATE for the others, each column
--    from the account's last event in the statement that sets it, by the same rules as before.
--    `UserErased` is folded here too (it was `erase_personal_data`'s update), so an erasure in
--    the same statement as an earlier event of the account leaves the row erased. The fields
--    the appender sealed reach the fold through the transaction-local setting
--    `onboard.fields_in_clear` (a JSON object from "<aggregate id>/<sequence>" to the event's
--    clear username, email and claims), which the appender sets just before its INSERT and the
--    trigger empties: each account's row is written once per statement, with its clear values.
--    Any other writer (an older binary, a test, an operator's INSERT of payloads in clear) sets
--    nothing and gets its payloads' own fields, as before.
--
-- The rules are unchanged, so the rows already projected stay as they are.

CREATE FUNCTION events_chain_head() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    head bytea;
BEGIN
    -- Held until this transaction ends: one appending transaction at a time (0008).
    PERFORM pg_advisory_xact_lock(8029185077895312386);
    SELECT hash INTO head FROM events ORDER BY global_position DESC LIMIT 1;
    PERFORM set_config('onboard.chain_head', coalesce(encode(head, 'hex'), 'none'), true);
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_chain_head
    BEFORE INSERT
    ON events
    FOR EACH STATEMENT
EXECUTE FUNCTION events_chain_head();

CREATE OR REPLACE FUNCTION events_append() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    head text := current_setting('onboard.chain_head', true);
    prev bytea;
BEGIN
    IF head IS NULL OR head = '' THEN
        -- Not set by `events_chain_head` (which every INSERT statement fires first): take the
        -- lock and read the head here, as 0008 did.
        PERFORM pg_advisory_xact_lock(8029185077895312386);
        SELECT hash INTO prev FROM events ORDER BY global_position DESC LIMIT 1;
    ELSIF head <> 'none' THEN
        prev := decode(head, 'hex');
    END IF;
    NEW.global_position := nextval(pg_get_serial_sequence('events', 'global_position'));
    NEW.recorded_at := clock_timestamp();
    NEW.prev_hash := prev;
    NEW.hash := event_hash(prev, NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
                           NEW.event_version, NEW.recorded_at, NEW.payload, NEW.metadata);
    head := set_config('onboard.chain_head', encode(NEW.hash, 'hex'), true);
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION events_to_outbox() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    INSERT INTO outbox (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                        metadata, global_position, recorded_at)
    SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
           global_position, recorded_at
    FROM appended
    ORDER BY global_position;
    IF FOUND THEN
        PERFORM pg_notify('onboard_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER events_to_outbox ON events;
CREATE TRIGGER events_to_outbox
    AFTER INSERT
    ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT
EXECUTE FUNCTION events_to_outbox();

-- The account's row now leaves with the projection (below); the rest of what an erasure removes
-- stays here, per row.
CREATE OR REPLACE FUNCTION erase_personal_data() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    account uuid := NEW.aggregate_id::uuid;
BEGIN
    DELETE FROM personal_data_keys WHERE user_id = account;
    DELETE FROM credentials WHERE user_id = account;
    DELETE FROM usernames WHERE user_id = account;
    UPDATE bulk_job_rows SET input = NULL, reason = NULL WHERE user_id = account;
    DELETE FROM mail_retries WHERE user_id = account;
    DELETE FROM idempotency_keys WHERE response ->> 'id' = account::text;
    RETURN NULL;
END
$$;

DROP TRIGGER project_account_state ON events;
DROP FUNCTION project_account_state();

CREATE FUNCTION project_account_state() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    -- The statement has no parameter, so each session plans it once (a generic plan).
    WITH c AS MATERIALIZED (SELECT nullif(current_setting('onboard.fields_in_clear', true), '')::jsonb AS clear),
         e AS (
        -- Each event that changes an account's row, with its body as it reads in clear, and what
        -- it sets: each `sets_*` names a group of columns, whose values follow it (a state sets
        -- the state, its time and the code's expiry). Instants travel as ISO text in UTC, exact
        -- to the microsecond whatever the session's DateStyle and TimeZone, so that a group fits
        -- in one text array below.
        SELECT b.user_id,
               lpad(b.sequence::text, 19, '0')                                  AS k,
               b.event_type,
               to_char(b.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')     AS recorded_at,
               b.body ->> 'domain'                                              AS domain,
               CASE b.event_type
                   WHEN 'UserInvited' THEN 'Invited'
                   WHEN 'CodeIssued' THEN 'CodeIssued'
                   WHEN 'CodeExpired' THEN 'Expired'
                   WHEN 'CodeLocked' THEN 'Locked'
                   WHEN 'InvitationRevoked' THEN 'Revoked'
                   WHEN 'PasswordSet' THEN 'PasswordSet'
                   WHEN 'UserActivated' THEN 'Active'
                   WHEN 'AccountDisabled' THEN 'Disabled'
                   WHEN 'AccountEnabled' THEN 'Active'
                   WHEN 'UserErased' THEN 'Erased'
                   END                                                          AS state,
               CASE
                   WHEN b.event_type = 'CodeIssued' THEN
                       to_char((b.body ->> 'expires_at')::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
                   END                                                          AS code_expires_at,
               b.event_type IN ('UserInvited', 'CodeIssued', 'InvitationMailSent', 'InvitationMailFailed',
                                'InvitationMailAbandoned', 'UserErased')        AS sets_delivery,
               CASE b.event_type
                   WHEN 'CodeIssued' THEN 'queued'
                   WHEN 'InvitationMailSent' THEN 'sent'
                   WHEN 'InvitationMailFailed' THEN 'failed'
                   WHEN 'InvitationMailAbandoned' THEN 'abandoned'
                   END                                                          AS delivery,
               b.event_type IN ('UserInvited', 'UserActivated', 'UserProvisioned', 'ProvisioningFailed',
                                'UserErased')                                   AS sets_provisioning,
               CASE b.event_type
                   WHEN 'UserActivated' THEN 'pending'
                   WHEN 'UserProvisioned' THEN 'provisioned'
                   WHEN 'ProvisioningFailed' THEN 'failed'
                   END                                                          AS provisioning,
               b.event_type IN ('UserInvited', 'UserErased')                    AS sets_username,
               CASE WHEN b.event_type = 'UserInvited' THEN b.body ->> 'username' END AS username,
               b.event_type IN ('UserInvited', 'EmailChanged', 'UserErased')    AS sets_email,
               CASE WHEN b.event_type <> 'UserErased' THEN b.body ->> 'email' END AS email,
               b.event_type IN ('UserInvited', 'ClaimsUpdated', 'UserErased')   AS sets_external_id,
               CASE WHEN b.event_type <> 'UserErased' THEN b.body -> 'claims' ->> 'external_id' END
                                                                                AS external_id
        FROM (SELECT a.aggregate_id::uuid AS user_id,
                     a.sequence,
                     a.event_type,
                     a.recorded_at,
                     CASE
                         WHEN c.clear ? (a.aggregate_id || '/' || a.sequence)
                             THEN (a.payload -> a.event_type) || (c.clear -> (a.aggregate_id || '/' || a.sequence))
                         ELSE a.payload -> a.event_type
                         END AS body
              FROM appended a
                       CROSS JOIN c
              WHERE a.aggregate_type = 'Onboarding'
                AND a.event_type IN ('UserInvited', 'CodeIssued', 'CodeExpired', 'CodeLocked',
                                     'InvitationRevoked', 'PasswordSet', 'UserActivated',
                                     'InvitationMailSent', 'InvitationMailFailed',
                                     'InvitationMailAbandoned', 'UserProvisioned',
                                     'ProvisioningFailed', 'AccountDisabled', 'AccountEnabled',
                                     'EmailChanged', 'ClaimsUpdated', 'UserErased')) b),
         -- Each account's row after the statement's events, in sequence order: every group of
         -- columns from the last event that sets it, if any does (`max` of arrays led by the
         -- zero-padded sequence picks it, without sorting each account's events).
         f AS (SELECT user_id,
                      bool_or(event_type = 'UserInvited')                                          AS invited,
                      max(ARRAY [k, state, recorded_at, code_expires_at]) FILTER (WHERE state IS NOT NULL)
                                                                                                   AS state,
                      max(ARRAY [k, delivery]) FILTER (WHERE sets_delivery)                         AS delivery,
                      max(ARRAY [k, provisioning]) FILTER (WHERE sets_provisioning)                 AS provisioning,
                      max(ARRAY [k, username]) FILTER (WHERE sets_username)                         AS username,
                      max(ARRAY [k, email]) FILTER (WHERE sets_email)                               AS email,
                      max(ARRAY [k, external_id]) FILTER (WHERE sets_external_id)                   AS external_id
               FROM e
               GROUP BY user_id),
         -- An account the statement invites has no row yet (a second invitation of one account
         -- meets the primary key, as the per-row INSERT did): `UserInvited` sets every column.
         invited AS (
             INSERT INTO account_states (user_id, state, state_since, code_expires_at, username, domain,
                                         email, created_at, delivery, provisioning, external_id)
                 SELECT f.user_id, f.state[2], (f.state[3]::timestamp AT TIME ZONE 'UTC'), (f.state[4]::timestamp AT TIME ZONE 'UTC'),
                        f.username[2], i.domain, f.email[2], (i.recorded_at::timestamp AT TIME ZONE 'UTC'), f.delivery[2],
                        f.provisioning[2], f.external_id[2]
                 FROM f
                          JOIN e i ON i.user_id = f.user_id AND i.event_type = 'UserInvited'
                 WHERE f.invited)
    UPDATE account_states s
    SET state           = CASE WHEN f.state IS NULL THEN s.state ELSE f.state[2] END,
        state_since     = CASE WHEN f.state IS NULL THEN s.state_since ELSE (f.state[3]::timestamp AT TIME ZONE 'UTC') END,
        code_expires_at = CASE WHEN f.state IS NULL THEN s.code_expires_at ELSE (f.state[4]::timestamp AT TIME ZONE 'UTC') END,
        delivery        = CASE WHEN f.delivery IS NULL THEN s.delivery ELSE f.delivery[2] END,
        provisioning    = CASE WHEN f.provisioning IS NULL THEN s.provisioning ELSE f.provisioning[2] END,
        username        = CASE WHEN f.username IS NULL THEN s.username ELSE f.username[2] END,
        email           = CASE WHEN f.email IS NULL THEN s.email ELSE f.email[2] END,
        external_id     = CASE WHEN f.external_id IS NULL THEN s.external_id ELSE f.external_id[2] END
    FROM f
    WHERE s.user_id = f.user_id
      AND NOT f.invited;
    IF current_setting('onboard.fields_in_clear', true) <> '' THEN
        PERFORM set_config('onboard.fields_in_clear', '', true);
    END IF;
    RETURN NULL;
END
$$;

-- AFTER the rows' triggers: `events_append` has drawn each event's position and time, and
-- `erase_personal_data` has run for an erasure.
CREATE TRIGGER project_account_state
    AFTER INSERT
    ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT
EXECUTE FUNCTION project_account_state();
