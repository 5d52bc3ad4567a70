-- The event log (postgres-es layout) plus what the engine needs around it.

CREATE TABLE events
(
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 0),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    -- Commit-independent order of the whole log; may commit out of order, see docs/ARCHITECTURE.md.
    global_position bigserial   NOT NULL UNIQUE,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots
(
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Transactional outbox: every event row is copied here by a trigger, in the same transaction as
-- the append, so nothing committed can miss Kafka. The relay deletes a row only after the
-- broker acknowledged it.
CREATE TABLE outbox
(
    id              bigserial   PRIMARY KEY,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    global_position bigint      NOT NULL,
    recorded_at     timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text
);

CREATE FUNCTION events_to_outbox() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    INSERT INTO outbox (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                        metadata, global_position, recorded_at)
    VALUES (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type, NEW.event_version,
            NEW.payload, NEW.metadata, NEW.global_position, NEW.recorded_at);
    PERFORM pg_notify('onboard_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_to_outbox
    AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_to_outbox();

-- Username uniqueness across aggregates: written by a trigger in the append's transaction, so two
-- concurrent invitations of one name in one domain cannot both commit (the second append fails
-- with a unique violation, which postgres-es reports as a conflict).
CREATE TABLE usernames
(
    domain       text        NOT NULL,
    username_key text        NOT NULL,
    user_id      uuid        NOT NULL UNIQUE,
    reserved_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, username_key)
);

CREATE FUNCTION reserve_username() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    INSERT INTO usernames (domain, username_key, user_id)
    VALUES (NEW.payload -> 'UserInvited' ->> 'domain',
            lower(NEW.payload -> 'UserInvited' ->> 'username'),
            (NEW.payload -> 'UserInvited' ->> 'user_id')::uuid);
    RETURN NULL;
END;
$$;

CREATE TRIGGER reserve_username
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.event_type = 'UserInvited')
EXECUTE FUNCTION reserve_username();

-- Outbox rows the relay could not map to a public event (corrupt or unknown). Kept, never lost,
-- and out of the way so one bad row cannot stall the others.
CREATE TABLE outbox_dead_letter
(
    id              bigint      PRIMARY KEY,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    error           text        NOT NULL,
    moved_at        timestamptz NOT NULL DEFAULT now()
);
