-- Queries of the benchmark harness (bench/run.py), in the benchmark's own databases only.

-- name: install_completion_notify
-- Ours has no completion NOTIFY (nothing in the product listens for one): the benchmark adds this
-- trigger to ITS database so a LISTENing connection can time completions exactly as it does the
-- peer's. It costs ours one pg_notify per finished row, as the peer's trigger costs it.
CREATE FUNCTION bench_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_finished', NEW.command_id);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_finished AFTER UPDATE OF status ON agent_commands
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION bench_notify_finished();

-- name: create_command
-- One command for one agent, as any SQL client may create it (the dispatcher is woken by the
-- table's own NOTIFY trigger).
INSERT INTO agent_commands (command_id, agent_id, action) VALUES ($1, $2, 'PING');

-- name: create_peer_command
-- The peer's create at its best: the command row and its procrastinate job in ONE statement (the
-- SQL `Task.defer_async` runs), so the peer pays one round trip like ours.
WITH created AS (
    INSERT INTO peer_commands (command_id, agent_id, action) VALUES ($1::uuid, $2, 'PING')
    RETURNING command_id, agent_id, action, payload
)
SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(
    'default', 'deliver_command', 0, NULL, NULL,
    jsonb_build_object('command_id', command_id, 'agent_id', agent_id, 'action', action, 'payload', payload),
    NULL
)::procrastinate_job_to_defer_v1]) FROM created;

-- name: stages
-- Where ours spent the time, from the rows' own timestamps (PostgreSQL's clock), in ms: created ->
-- claimed, and claimed -> result recorded (a PING's result is its ack too: the agent sends no ack
-- for a command whose result is ready within 5 ms, so acknowledged_at = completed_at).
SELECT extract(epoch FROM sent_at - created_at) * 1000 AS claim,
       extract(epoch FROM completed_at - sent_at) * 1000 AS "to result"
FROM agent_commands WHERE command_id = ANY($1::text[]) AND status = 'completed';

-- name: count_statuses
SELECT status, count(*) AS n FROM agent_commands WHERE command_id = ANY($1::text[]) GROUP BY status;

-- name: attempts_over_one
-- Of these commands, those delivered more than once (a bulk run's "none twice").
SELECT count(*) FROM agent_commands WHERE command_id = ANY($1::text[]) AND attempts > 1;

-- name: peer_workers
SELECT count(*) FROM procrastinate_workers;

-- name: server_settings
-- PostgreSQL settings that bound commit-heavy work, recorded with every run.
SELECT name, setting FROM pg_settings
WHERE name IN ('server_version', 'synchronous_commit', 'fsync', 'wal_sync_method', 'commit_delay',
               'shared_buffers', 'max_connections', 'wal_level', 'max_wal_size');

-- name: install_floor_tables
-- Scratch tables for the floor: what 20 SQL clients can INSERT one row per commit on this server,
-- without and with a per-row NOTIFY (a NOTIFYing transaction holds a global lock through its commit,
-- WAL flush included, so such commits queue one behind another).
CREATE TABLE bench_floor_plain (id bigserial PRIMARY KEY, value text NOT NULL);
CREATE TABLE bench_floor_notified (id bigserial PRIMARY KEY, value text NOT NULL);
CREATE FUNCTION bench_floor_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_floor', NEW.value);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_floor_notify AFTER INSERT ON bench_floor_notified
    FOR EACH ROW EXECUTE FUNCTION bench_floor_notify();

-- name: floor_insert_plain
INSERT INTO bench_floor_plain (value) VALUES ($1);

-- name: floor_insert_notified
INSERT INTO bench_floor_notified (value) VALUES ($1);

-- name: active_backends
-- The statements the backends of database $1 run right now (not idle, not this sampler).
SELECT query, wait_event_type || ':' || wait_event AS wait
FROM pg_stat_activity
WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid();
