-- Consumers read each generation of the event topic in a consumer group of its own
-- (docs/adr/0038): a new group has no offsets and starts at the beginning, so no consumer records
-- which partitions its group started over any more.
DROP TABLE consumer_generations;
