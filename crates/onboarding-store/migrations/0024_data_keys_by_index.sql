-- The data keys of many accounts at once, always through the primary key (docs/performance.md,
-- "The mail path, per mail").
--
-- The appender (sealing a batch) and every reader of sealed events (the relay, the replay) look
-- up the data keys of a batch of accounts with `user_id = ANY(ids)`. While the table grows
-- quickly (a bulk import, the first minutes of a new installation, a benchmark) its statistics
-- lag behind it: analysed when it held a few rows, it looks nearly empty to the planner, which
-- then scans the whole table for a batch of tens of ids rather than probing the index once per
-- id. Each such scan costs in proportion to the table; measured on the mail path alone at
-- 20,000 accounts, it took 67 to 90 µs of PostgreSQL's time per mail in three runs of five,
-- against 4 to 5 µs when the index was used.
--
-- `personal_data_keys_of` runs the look-up with sequential scans disabled, so the plan is the
-- index whatever the statistics say: one probe per id, as for a single account. The call costs
-- more than the bare statement when the statistics are right (in pg_stat_statements' times on
-- the accept path, about 55 µs per invitation against 10, the look-up inside it 6 to 9), for a
-- bound on the cost when they are not.
CREATE FUNCTION personal_data_keys_of(ids uuid[])
    RETURNS TABLE (user_id uuid, data_key bytea, wrapped_by text)
    LANGUAGE plpgsql
    STABLE
    SET enable_seqscan = off
AS
$$
BEGIN
    RETURN QUERY
        SELECT k.user_id, k.data_key, k.wrapped_by
        FROM personal_data_keys k
        WHERE k.user_id = ANY (ids);
END;
$$;
