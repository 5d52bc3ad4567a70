-- What PostgreSQL ran for database :'db', from pg_stat_statements, per unit of work (:n units:
-- invitations accepted, or mails sent), the statements called at least once per ten units or
-- taking at least 1 µs per unit: each statement's calls, rows, shared buffers dirtied, WAL
-- bytes and execution time (toplevel: sent by the engine; nested: run by a trigger or a
-- function), then the totals of the statements the engine sent. Used by tests/bench/accept-path
-- and by `tests/bench/run --statements`.
\pset footer off
SELECT CASE WHEN toplevel THEN 'top' ELSE 'nested' END AS level,
       round(calls::numeric / :n, 2) AS calls,
       round(rows::numeric / :n, 2) AS rows,
       round(shared_blks_dirtied::numeric / :n, 2) AS dirtied,
       round(wal_bytes / :n) AS wal_bytes,
       round((total_exec_time * 1000 / :n)::numeric) AS µs,
       left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS statement
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = :'db')
  AND (calls >= :n / 10 OR total_exec_time * 1000 / :n >= 1)
ORDER BY toplevel DESC, total_exec_time DESC;
SELECT round(sum(calls)::numeric / :n, 2) AS statements_sent,
       round(sum(shared_blks_dirtied)::numeric / :n, 2) AS dirtied,
       round(sum(shared_blks_hit + shared_blks_read)::numeric / :n, 1) AS buffers_touched,
       round(sum(total_exec_time)::numeric * 1000 / :n) AS µs
FROM pg_stat_statements
WHERE toplevel AND dbid = (SELECT oid FROM pg_database WHERE datname = :'db');
