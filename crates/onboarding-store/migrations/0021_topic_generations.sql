-- The generations of a topic the broker lost (docs/adr/0037). The relay counts each time it found
-- the broker holding fewer records than it published and recreated the event topic, in the
-- transaction that records the republish (relay_republish). A consumer that sees the count move
-- starts each partition of its topic over from the beginning, once per generation, whichever
-- member of its group gets the partition first; `consumer_generations` records which partitions
-- a group started over in which generation, so a member that joins later, or a consumer that
-- restarts, does not start them over again.
CREATE TABLE topic_generations
(
    topic        text        PRIMARY KEY,
    generation   bigint      NOT NULL,
    recreated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE consumer_generations
(
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    generation     bigint      NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
