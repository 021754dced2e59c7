-- Retention (retention.py): the audit trail, finished commands with their attempts, and inventories.
-- Each statement deletes at most $2 rows in its own transaction; SKIP LOCKED lets dispatcher replicas
-- prune at the same time and never waits on a row someone else holds. The rows go by their keys
-- (= ANY(ARRAY(...)): index lookups; a join with the batch was planned as a hash join over the whole
-- table under the services' generic plans, 40 ms a batch at 200,000 rows and growing with the table). A command is finished when its
-- status is none of pending, sent, acknowledged (completed, failed, cancelled and any final status a
-- later migration adds); an open command is never touched, whatever its age.

-- name: no_jit
-- For this transaction only: the generic plan's cost of the scan for old rows is high enough to switch
-- JIT compilation on, which took 40 of a batch's 55 ms (bench/retention.py) and saves nothing here.
SELECT set_config('jit', 'off', true);

-- name: declare_retention
-- For this transaction only ($1: days, at least 1 or the trigger refuses every row). Audit trail only:
-- the trigger of migration 0011 refuses any other DELETE, and any DELETE at all in a transaction that
-- has not declared it.
SELECT set_config('streamspace.audit_retention', make_interval(days => $1)::text, true);

-- name: prune_audit
-- The oldest $2 rows past $1 days.
WITH old AS (
    SELECT id FROM audit_log
    WHERE at < now() - make_interval(days => $1)
    ORDER BY at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM audit_log WHERE id = ANY(ARRAY(SELECT id FROM old)) RETURNING 1
)
SELECT count(*) AS rows, 0::bigint AS attempts FROM gone;

-- name: prune_commands
-- The oldest $2 finished commands (inventories aside: prune_inventories) created and last changed more
-- than $1 days ago, and their attempts. A session that still exists keeps its newest command (what it
-- last asked for and how that ended: the reason of a failed session); only older ones of it go.
-- Oldest first along agent_commands_created.
WITH old AS (
    SELECT c.id, c.command_id FROM agent_commands c
    WHERE c.created_at < now() - make_interval(days => $1)
      AND c.updated_at < now() - make_interval(days => $1)
      AND c.status NOT IN ('pending', 'sent', 'acknowledged')
      AND c.action <> 'INVENTORY_SESSIONS'
      AND (c.session_id IS NULL
           OR NOT EXISTS (SELECT 1 FROM sessions s
                          WHERE s.id = CASE WHEN c.session_id ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                                            THEN c.session_id::uuid END)
           OR EXISTS (SELECT 1 FROM agent_commands n
                      WHERE n.session_id = c.session_id AND (n.created_at, n.id) > (c.created_at, c.id)))
    ORDER BY c.created_at
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED
), attempts AS (
    DELETE FROM agent_command_attempts WHERE command_id = ANY(ARRAY(SELECT command_id FROM old)) RETURNING 1
), gone AS (
    DELETE FROM agent_commands WHERE id = ANY(ARRAY(SELECT id FROM old)) RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS rows, (SELECT count(*) FROM attempts) AS attempts;

-- name: prune_inventories
-- Up to $2 finished INVENTORY_SESSIONS commands created and last changed more than $1 hours ago, oldest
-- first per agent (ranges of agent_commands_inventories, migration 0012), and their attempts. Each
-- agent keeps its newest completed inventory, however old: what its platform last held.
WITH old AS (
    SELECT due.id, due.command_id
    FROM agents a CROSS JOIN LATERAL (
        SELECT c.id, c.command_id FROM agent_commands c
        WHERE c.agent_id = a.agent_id AND c.action = 'INVENTORY_SESSIONS'
          AND c.created_at < now() - make_interval(hours => $1)
          AND c.updated_at < now() - make_interval(hours => $1)
          AND c.status NOT IN ('pending', 'sent', 'acknowledged')
          AND (c.status <> 'completed'
               OR EXISTS (SELECT 1 FROM agent_commands n
                          WHERE n.agent_id = c.agent_id AND n.action = 'INVENTORY_SESSIONS'
                            AND n.status = 'completed' AND (n.created_at, n.id) > (c.created_at, c.id)))
        ORDER BY c.created_at
        LIMIT $2
        FOR UPDATE OF c SKIP LOCKED
    ) AS due
    LIMIT $2
), attempts AS (
    DELETE FROM agent_command_attempts WHERE command_id = ANY(ARRAY(SELECT command_id FROM old)) RETURNING 1
), gone AS (
    DELETE FROM agent_commands WHERE id = ANY(ARRAY(SELECT id FROM old)) RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS rows, (SELECT count(*) FROM attempts) AS attempts;

-- name: oldest_audit
-- Seconds since the oldest audit row (NULL: none); one step along audit_log_at.
SELECT extract(epoch FROM now() - at)::float8 FROM audit_log ORDER BY at LIMIT 1;

-- name: oldest_finished_command
-- Seconds since the oldest finished command still stored was created (NULL: none); along
-- agent_commands_created from its old end, stopping at the first finished row.
SELECT extract(epoch FROM now() - created_at)::float8 FROM agent_commands
WHERE status NOT IN ('pending', 'sent', 'acknowledged')
ORDER BY created_at LIMIT 1;
