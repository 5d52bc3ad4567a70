-- The password hash leaves the event log (docs/adr/0018).
--
-- Until now `PasswordSet` (1.0) held the argon2id PHC string in its payload: hash-chained into
-- the log for good, copied to the outbox (and to the dead letters), kept in every backup. From
-- now on the hash lives in `credentials`, one row per account, which can be replaced (a rehash at
-- a raised cost) and erased. `PasswordSet` 2.0 records the fact and the hash's scheme (algorithm
-- and cost), not the hash.
--
-- 1. `credentials_take_the_hash`, a BEFORE INSERT trigger on `events`, moves the hash of an
--    appended event into `credentials` and removes it from the payload, in the append's
--    transaction. It fires before `events_append` (PostgreSQL fires triggers of one kind in the
--    order of their names, and "credentials_…" sorts before "events_…"), so the chain hash, the
--    stored row and every trigger after it (outbox, account_states) see the payload without it.
-- 2. Hashes already in the log are copied into `credentials`. The old rows keep them: the log is
--    append-only and its chain covers them (the ADR says what that means for erasure).
-- 3. Outbox rows not yet relayed and dead letters lose their copy of the hash.

CREATE TABLE credentials
(
    user_id     uuid PRIMARY KEY,
    -- The PHC string (`$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`): all a verifier needs.
    phc         text        NOT NULL,
    -- The scheme, read from `phc`: which hashes a raised cost will rehash, at a glance.
    algorithm   text        NOT NULL CHECK (algorithm = 'argon2id'),
    version     integer     NOT NULL CHECK (version > 0),
    memory_kib  integer     NOT NULL CHECK (memory_kib > 0),
    iterations  integer     NOT NULL CHECK (iterations > 0),
    parallelism integer     NOT NULL CHECK (parallelism > 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- The scheme of an argon2id PHC string as `PasswordSet` 2.0 records it (the JSON of
-- `onboarding_domain::password::HashScheme`), or NULL for a string that is not one. argon2 writes
-- the parameters in the order m, t, p; a string without `v=` is version 16 (0x10).
CREATE FUNCTION phc_scheme(phc text) RETURNS jsonb
    LANGUAGE sql
    IMMUTABLE AS
$$
SELECT CASE
           WHEN m IS NOT NULL THEN jsonb_build_object(
                   'algorithm', m[1],
                   'version', coalesce(m[2]::integer, 16),
                   'memory_kib', m[3]::integer,
                   'iterations', m[4]::integer,
                   'parallelism', m[5]::integer)
           END
FROM regexp_match(phc, '^\$(argon2id)\$(?:v=([0-9]{1,9})\$)?m=([0-9]{1,9}),t=([0-9]{1,9}),p=([0-9]{1,9})\$') AS m
$$;

CREATE FUNCTION credentials_take_the_hash() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    phc    text  := NEW.payload -> NEW.event_type ->> 'password_hash';
    scheme jsonb := phc_scheme(phc);
BEGIN
    IF scheme IS NULL THEN
        -- Never the string itself: it may be a hash.
        RAISE EXCEPTION 'the % event of account % carries a password hash that is not an argon2id PHC string',
            NEW.event_type, NEW.aggregate_id;
    END IF;
    INSERT INTO credentials (user_id, phc, algorithm, version, memory_kib, iterations, parallelism,
                             created_at, updated_at)
    VALUES (NEW.aggregate_id::uuid, phc, scheme ->> 'algorithm', (scheme ->> 'version')::integer,
            (scheme ->> 'memory_kib')::integer, (scheme ->> 'iterations')::integer,
            (scheme ->> 'parallelism')::integer, clock_timestamp(), clock_timestamp())
    ON CONFLICT (user_id) DO UPDATE
        SET phc         = EXCLUDED.phc,
            algorithm   = EXCLUDED.algorithm,
            version     = EXCLUDED.version,
            memory_kib  = EXCLUDED.memory_kib,
            iterations  = EXCLUDED.iterations,
            parallelism = EXCLUDED.parallelism,
            updated_at  = EXCLUDED.updated_at;
    NEW.payload := NEW.payload #- ARRAY [NEW.event_type, 'password_hash'];
    -- A `PasswordSet` 1.0 from a binary older than this migration (a rolling upgrade) is stored
    -- in the 2.0 shape, so it loads without its hash.
    IF NOT (NEW.payload -> NEW.event_type) ? 'scheme' THEN
        NEW.payload := jsonb_set(NEW.payload, ARRAY [NEW.event_type, 'scheme'], scheme);
    END IF;
    IF NEW.event_type = 'PasswordSet' THEN
        NEW.event_version := '2.0';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER credentials_take_the_hash
    BEFORE INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Onboarding' AND (NEW.payload -> NEW.event_type) ? 'password_hash')
EXECUTE FUNCTION credentials_take_the_hash();

-- Hashes already in the log: the newest of each account (there is one: a password is set once).
INSERT INTO credentials (user_id, phc, algorithm, version, memory_kib, iterations, parallelism,
                         created_at, updated_at)
SELECT DISTINCT ON (e.aggregate_id) e.aggregate_id::uuid,
                                    h.phc,
                                    h.scheme ->> 'algorithm',
                                    (h.scheme ->> 'version')::integer,
                                    (h.scheme ->> 'memory_kib')::integer,
                                    (h.scheme ->> 'iterations')::integer,
                                    (h.scheme ->> 'parallelism')::integer,
                                    e.recorded_at,
                                    e.recorded_at
FROM events e
         CROSS JOIN LATERAL (SELECT e.payload -> 'PasswordSet' ->> 'password_hash'              AS phc,
                                    phc_scheme(e.payload -> 'PasswordSet' ->> 'password_hash') AS scheme) h
WHERE e.aggregate_type = 'Onboarding'
  AND e.event_type = 'PasswordSet'
  AND h.scheme IS NOT NULL
ORDER BY e.aggregate_id, e.sequence DESC;

-- A hash that could not be read would leave its account without a credential: stop, naming how
-- many (never the hashes).
DO
$$
    DECLARE
        unreadable bigint;
    BEGIN
        SELECT count(*)
        INTO unreadable
        FROM events e
        WHERE e.aggregate_type = 'Onboarding'
          AND e.event_type = 'PasswordSet'
          AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.user_id = e.aggregate_id::uuid);
        IF unreadable > 0 THEN
            RAISE EXCEPTION '% PasswordSet events hold no argon2id PHC string that could be copied into credentials',
                unreadable;
        END IF;
    END
$$;

-- Copies outside the log: outbox rows not yet relayed take the 2.0 shape, dead letters lose the
-- hash (they are kept for inspection, not relayed).
UPDATE outbox
SET payload       = jsonb_set(payload #- '{PasswordSet,password_hash}', '{PasswordSet,scheme}',
                              phc_scheme(payload -> 'PasswordSet' ->> 'password_hash')),
    event_version = '2.0'
WHERE event_type = 'PasswordSet'
  AND phc_scheme(payload -> 'PasswordSet' ->> 'password_hash') IS NOT NULL;

UPDATE outbox_dead_letter
SET payload = payload #- '{PasswordSet,password_hash}'
WHERE event_type = 'PasswordSet'
  AND jsonb_typeof(payload -> 'PasswordSet') = 'object';
