-- Commands through the REST API (api/commands.py). Status transitions live with the command lifecycle.

-- name: create_command
-- Inserts nothing (and returns no row) when the agent is unknown.
INSERT INTO agent_commands (agent_id, command_id, action, payload, session_id, max_attempts, timeout_seconds)
SELECT $1::text, coalesce($2::text, gen_random_uuid()::text), $3, $4, $5, $6, $7
WHERE EXISTS (SELECT 1 FROM agents WHERE agent_id = $1)
RETURNING id::text, command_id, agent_id, session_id, action, payload, status, error_message, result,
          attempts, max_attempts, timeout_seconds, next_attempt_at, dispatched_by, delivered_via_pod, created_at, sent_at,
          acknowledged_at, completed_at, updated_at;

-- name: get_command
SELECT id::text, command_id, agent_id, session_id, action, payload, status, error_message, result,
       attempts, max_attempts, timeout_seconds, next_attempt_at, dispatched_by, delivered_via_pod, created_at, sent_at,
       acknowledged_at, completed_at, updated_at
FROM agent_commands WHERE command_id = $1;
