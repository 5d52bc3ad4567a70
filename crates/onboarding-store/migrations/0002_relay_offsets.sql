-- The next offset the relay expects on each partition of the topic, advanced after every acked
-- batch. A broker whose high watermark is below it has lost records (an in-memory broker that
-- restarted, a topic deleted by hand): the relay then republishes the log from PostgreSQL.
CREATE TABLE relay_offsets
(
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);
