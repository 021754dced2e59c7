-- name: open_tunnel
-- An OPEN_TUNNEL command for the session's agent: one attempt (a retry would need a new token), no
-- session_id (it moves no session state; the session triggers of migration 0008 must not see it).
INSERT INTO agent_commands (agent_id, action, payload, max_attempts, timeout_seconds)
VALUES ($1, 'OPEN_TUNNEL', $2, 1, $3)
RETURNING command_id;

-- name: tunnel_command
-- How the OPEN_TUNNEL command stands, while the replica waits for the agent to dial back.
SELECT status, error_message FROM agent_commands WHERE command_id = $1;
