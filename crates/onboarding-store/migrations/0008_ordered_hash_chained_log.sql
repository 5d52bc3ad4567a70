-- The event log becomes ordered by commit and tamper-evident (docs/adr/0007, docs/adr/0008).
--
-- 1. Appends are serialised by a transaction-scoped advisory lock taken in a BEFORE INSERT
--    trigger; the trigger, not the column default, draws global_position, so positions are
--    handed out in commit order: a reader that has seen position N has seen every committed
--    event below N, and no transaction still running can commit below it.
-- 2. Each event carries `hash` = SHA-256 over its content and the previous event's hash
--    (`prev_hash`, in global_position order). The canonical content is defined by
--    `event_hash` below and in docs/operations.md ("Auditing"); `onboard audit verify`
--    recomputes it independently.
-- 3. The log is append-only: UPDATE and DELETE on `events` are refused.

LOCK TABLE events IN ACCESS EXCLUSIVE MODE;

-- Fields of the canonical content are separated by newlines; none of the text fields may hold one.
ALTER TABLE events
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash      bytea,
    ADD CONSTRAINT events_fields_have_no_newline CHECK (
        strpos(aggregate_type, E'\n') = 0 AND strpos(aggregate_id, E'\n') = 0
            AND strpos(event_type, E'\n') = 0 AND strpos(event_version, E'\n') = 0);

CREATE FUNCTION event_hash(prev bytea, aggregate_type text, aggregate_id text, sequence bigint,
                           event_type text, event_version text, recorded_at timestamptz,
                           payload jsonb, metadata jsonb) RETURNS bytea
    LANGUAGE sql STABLE AS
$$
SELECT sha256(convert_to(
        'onboard-event-v1' || E'\n' ||
        coalesce(encode(prev, 'hex'), '') || E'\n' ||
        aggregate_type || E'\n' ||
        aggregate_id || E'\n' ||
        sequence::text || E'\n' ||
        event_type || E'\n' ||
        event_version || E'\n' ||
        to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || E'\n' ||
        payload::text || E'\n' ||
        metadata::text, 'UTF8'))
$$;

-- Rows written before this migration: chained in their global_position order.
DO
$$
    DECLARE
        r    record;
        prev bytea;
    BEGIN
        FOR r IN SELECT global_position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                        recorded_at, payload, metadata
                 FROM events
                 ORDER BY global_position
            LOOP
                UPDATE events
                SET prev_hash = prev,
                    hash      = event_hash(prev, r.aggregate_type, r.aggregate_id, r.sequence, r.event_type,
                                           r.event_version, r.recorded_at, r.payload, r.metadata)
                WHERE global_position = r.global_position
                RETURNING hash INTO prev;
            END LOOP;
    END
$$;

ALTER TABLE events
    ALTER COLUMN hash SET NOT NULL,
    -- Drawn by the trigger under the lock, never by a default outside it.
    ALTER COLUMN global_position DROP DEFAULT;

CREATE FUNCTION events_append() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    prev bytea;
BEGIN
    -- Held until this transaction ends: one appending transaction at a time, so position order
    -- is commit order. Arbitrary but fixed key ("onboard" + 2).
    PERFORM pg_advisory_xact_lock(8029185077895312386);
    NEW.global_position := nextval(pg_get_serial_sequence('events', 'global_position'));
    NEW.recorded_at := clock_timestamp();
    SELECT hash INTO prev FROM events ORDER BY global_position DESC LIMIT 1;
    NEW.prev_hash := prev;
    NEW.hash := event_hash(prev, NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
                           NEW.event_version, NEW.recorded_at, NEW.payload, NEW.metadata);
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_append
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_append();

CREATE FUNCTION events_append_only() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
