-- Commands through the REST API (api/commands.py). Status transitions live with the command lifecycle.

-- name: create_command
-- Inserts nothing (and returns no row) when the agent is unknown. The command's audit row (who: $8-$12,
-- audit.who()) goes in the same statement: a create is one round trip and one commit, audited or not
-- (a transaction around it and audit.record() cost 0.4 ms more per create, docs/security.md).
-- Nor for an agent that was deleted (drained). $13: its expiry (NULL: none, it waits for its agent).
WITH created AS (
    INSERT INTO agent_commands (agent_id, command_id, action, payload, session_id, max_attempts, timeout_seconds,
                                expires_at)
    SELECT $1::text, coalesce($2::text, gen_random_uuid()::text), $3, $4, $5, $6, $7, $13::timestamptz
    WHERE EXISTS (SELECT 1 FROM agents WHERE agent_id = $1 AND deleted_at IS NULL)
    RETURNING id::text, command_id, agent_id, session_id, action, payload, status, error_message, result,
              attempts, max_attempts, timeout_seconds, expires_at, next_attempt_at, dispatched_by, delivered_via_pod, created_at,
              sent_at, acknowledged_at, completed_at, updated_at
), audited AS (
    INSERT INTO audit_log (actor_id, actor_name, key_id, address, forwarded_for, action, target, detail)
    SELECT $8::uuid, $9, $10::uuid, $11, $12, 'command.create', command_id,
           jsonb_build_object('agent_id', agent_id, 'action', action, 'session_id', session_id)
    FROM created
)
SELECT * FROM created;

-- name: create_commands
-- The bulk create (POST /api/v1/commands): item i of the arrays $1-$5 (agent id, action, payload as
-- JSON text, session id, timeout) is command i, all in this one statement: one commit, all or none, and
-- one wake-up (migration 0015's statement trigger). The ids are drawn before the insert, so they come
-- back in the items' order. When an agent is unknown or deleted nothing is inserted, and
-- `unknown_item` is the first such item's position (1-based). $6: the expiry of all; $7-$11: who
-- (audit.who()), one audit row per command, as create_command writes.
WITH items AS MATERIALIZED (
    SELECT i.position, i.agent_id, gen_random_uuid()::text AS command_id, i.action, i.payload::jsonb AS payload,
           i.session_id, i.timeout_seconds
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[]) WITH ORDINALITY
         AS i (agent_id, action, payload, session_id, timeout_seconds, position)
), unknown AS (
    SELECT min(position) AS position FROM items
    WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = items.agent_id AND a.deleted_at IS NULL)
), created AS (
    INSERT INTO agent_commands (agent_id, command_id, action, payload, session_id, timeout_seconds, expires_at)
    SELECT agent_id, command_id, action, payload, session_id, timeout_seconds, $6::timestamptz
    FROM items WHERE (SELECT position FROM unknown) IS NULL
    ORDER BY position
    RETURNING command_id, agent_id, action, session_id
), audited AS (
    INSERT INTO audit_log (actor_id, actor_name, key_id, address, forwarded_for, action, target, detail)
    SELECT $7::uuid, $8, $9::uuid, $10, $11, 'command.create', command_id,
           jsonb_build_object('agent_id', agent_id, 'action', action, 'session_id', session_id)
    FROM created
)
SELECT (SELECT position FROM unknown) AS unknown_item,
       (SELECT count(*) FROM created) AS created,
       array(SELECT command_id FROM items ORDER BY position) AS command_ids;

-- name: get_command
SELECT id::text, command_id, agent_id, session_id, action, payload, status, error_message, result,
       attempts, max_attempts, timeout_seconds, expires_at, next_attempt_at, dispatched_by, delivered_via_pod, created_at, sent_at,
       acknowledged_at, completed_at, updated_at
FROM agent_commands WHERE command_id = $1;

-- name: command_status
SELECT status FROM agent_commands WHERE command_id = $1;

-- name: attempt_history
-- The attempts that ended in a retry, a failure or a cancel (migration 0006), oldest first.
SELECT attempt, left_status, outcome, reason, dispatched_by, delivered_via_pod, sent_at, acknowledged_at, ended_at
FROM agent_command_attempts WHERE command_id = $1 ORDER BY attempt;

-- name: list_commands
-- Newest first; every filter optional (NULL). $6/$7: the cursor, the (created_at, id) of the last row seen.
SELECT id::text, command_id, agent_id, session_id, action, payload, status, error_message, result,
       attempts, max_attempts, timeout_seconds, expires_at, next_attempt_at, dispatched_by, delivered_via_pod, created_at,
       sent_at, acknowledged_at, completed_at, updated_at
FROM agent_commands
WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))
  AND ($2::text IS NULL OR agent_id = $2)
  AND ($3::text IS NULL OR session_id = $3)
  AND ($4::timestamptz IS NULL OR created_at >= $4)
  AND ($5::timestamptz IS NULL OR created_at < $5)
  AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $8;

-- name: agent_deleted_at
-- Why a create found no agent: NULL row (unknown) or its deleted_at.
SELECT deleted_at FROM agents WHERE agent_id = $1;
