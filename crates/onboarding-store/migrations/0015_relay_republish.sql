-- A republish of the log after the broker lost records (docs/adr/0025). The relay walks the
-- log's positions (after_position, up_to_position] in chunks, committing its progress after
-- each chunk the broker acknowledged, so a restarted relay goes on where it stopped. Events
-- appended after the loss go out through the outbox meanwhile; those of a user whose history is
-- not republished yet wait for it, so that each user's events stay in order on the topic.
CREATE TABLE relay_republish
(
    topic          text        PRIMARY KEY,
    after_position bigint      NOT NULL,
    up_to_position bigint      NOT NULL,
    republished    bigint      NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now()
);
