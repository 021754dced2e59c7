-- Queries of the capacity measurements (bench/capacity.py), on the bench's own PostgreSQL server.

-- name: install_statements
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

-- name: reset_statements
SELECT pg_stat_statements_reset();

-- name: wal_now
-- WAL written since the server's start, in bytes (instance-wide: the server is the bench's alone), and
-- pg_stat_wal's records, full-page images and syncs.
SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8 AS wal_bytes, wal_records, wal_fpi, wal_sync
FROM pg_stat_wal;

-- name: database_counters
-- Commits and rows of the bench's database (flushed by each backend within ~1-10 s of its work).
SELECT xact_commit AS commits, tup_inserted AS inserted, tup_updated AS updated, tup_deleted AS deleted
FROM pg_stat_database WHERE datname = current_database();

-- name: table_counters
SELECT relname AS table, n_tup_ins AS inserted, n_tup_upd AS updated, n_tup_del AS deleted
FROM pg_stat_user_tables;

-- name: top_statements
-- The statements of the window (after reset_statements), by calls: what a command costs PostgreSQL.
SELECT left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query, calls, rows,
       round(total_exec_time::numeric, 1)::float8 AS total_ms, wal_bytes::float8 AS wal_bytes
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY calls DESC LIMIT $1;

-- name: open_commands
SELECT count(*) FROM agent_commands WHERE status IN ('pending', 'sent', 'acknowledged');

-- name: commands_of_sessions
SELECT count(*) FROM agent_commands WHERE session_id = ANY($1::text[]);

-- name: sessions_left
SELECT count(*) FROM sessions WHERE id = ANY($1::uuid[]);

-- name: pgbench_table
CREATE TABLE IF NOT EXISTS budget (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), v text);
