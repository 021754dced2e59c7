-- bench/retention.py: a throwaway database filled with finished commands, and the time-partitioned
-- prototype it is compared with. Never run against a real installation.

-- name: agents
INSERT INTO agents (agent_id) SELECT 'bench-' || g FROM generate_series(0, 99) AS g
UNION ALL SELECT 'bench-live';

-- name: drop_keys
-- Loading 10 million rows is several times faster into a table without indexes; they are rebuilt after.
ALTER TABLE agent_command_attempts DROP CONSTRAINT agent_command_attempts_command_id_fkey;
ALTER TABLE agent_commands DROP CONSTRAINT agent_commands_pkey, DROP CONSTRAINT agent_commands_command_id_key;

-- name: plain_indexes
SELECT indexname, indexdef FROM pg_indexes
WHERE tablename = 'agent_commands' AND indexname NOT IN ('agent_commands_pkey', 'agent_commands_command_id_key');

-- name: add_keys
ALTER TABLE agent_commands ADD CONSTRAINT agent_commands_pkey PRIMARY KEY (id),
    ADD CONSTRAINT agent_commands_command_id_key UNIQUE (command_id);
ALTER TABLE agent_command_attempts ADD CONSTRAINT agent_command_attempts_command_id_fkey
    FOREIGN KEY (command_id) REFERENCES agent_commands (command_id) ON DELETE CASCADE;

-- name: fill
-- Finished commands $1..$2 of $3, created evenly over the last $4 days (the first the oldest): 90%
-- completed, 5% failed, 5% cancelled, across 100 agents.
INSERT INTO agent_commands (agent_id, action, status, result, attempts, created_at, sent_at, acknowledged_at,
                            completed_at, updated_at)
SELECT 'bench-' || (g % 100), 'PING',
       CASE g % 20 WHEN 0 THEN 'failed' WHEN 1 THEN 'cancelled' ELSE 'completed' END,
       '{"pong": true}', 1, x.t, x.t, x.t, x.t, x.t
FROM generate_series($1::bigint, $2::bigint) AS g,
     LATERAL (SELECT now() - make_interval(secs => $4 * 86400.0 * (1 - g::float8 / $3))) AS x(t);

-- name: fill_attempts
-- One attempt row for every failed command (5%).
INSERT INTO agent_command_attempts (command_id, attempt, left_status, outcome, reason, ended_at)
SELECT command_id, 1, 'sent', 'failed', 'bench', completed_at FROM agent_commands WHERE status = 'failed';

-- name: counts
SELECT (SELECT count(*) FROM agent_commands) AS commands,
       (SELECT count(*) FROM agent_commands
        WHERE created_at < now() - make_interval(days => $1) AND status NOT IN ('pending', 'sent', 'acknowledged'))
           AS expired,
       (SELECT count(*) FROM agent_command_attempts) AS attempts,
       pg_total_relation_size('agent_commands') AS bytes;

-- name: create_command
INSERT INTO agent_commands (agent_id, action) VALUES ('bench-live', 'PING');

-- name: parts_table
-- The prototype: the same columns, range-partitioned by created_at, one partition per day.
CREATE TABLE parts (LIKE agent_commands INCLUDING DEFAULTS) PARTITION BY RANGE (created_at);

-- name: parts_partition
-- Partition $1 (days ago, 0 = today): [start of that day, start of the next).
SELECT format('CREATE TABLE parts_%s PARTITION OF parts FOR VALUES FROM (%L) TO (%L)', $1::int,
              date_trunc('day', now()) - make_interval(days => $1::int),
              date_trunc('day', now()) - make_interval(days => $1::int - 1));

-- name: parts_indexes
CREATE INDEX ON parts (created_at DESC, id DESC);
CREATE INDEX ON parts (id);
CREATE INDEX ON parts (command_id);

-- name: parts_fill
-- $1 rows evenly over the last $2 days.
INSERT INTO parts (id, command_id, agent_id, action, status, result, attempts, created_at, updated_at)
SELECT gen_random_uuid(), gen_random_uuid()::text, 'bench-' || (g % 100), 'PING', 'completed', '{"pong": true}', 1,
       now() - make_interval(secs => $2 * 86400.0 * (1 - g::float8 / $1)), now()
FROM generate_series(1, $1::bigint) AS g;

-- name: parts_create
INSERT INTO parts (id, command_id, agent_id, action) VALUES (gen_random_uuid(), gen_random_uuid()::text, 'bench-live', 'PING');
