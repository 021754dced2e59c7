-- Operator queries run by streamspace-admin.

-- name: ensure_agent
INSERT INTO agents (agent_id) VALUES ($1) ON CONFLICT (agent_id) DO NOTHING;

-- name: register_token
-- Idempotent for the same agent; returns the owner so a token can never be moved to another agent.
WITH inserted AS (
    INSERT INTO agent_tokens (agent_id, token_hash) VALUES ($1, $2)
    ON CONFLICT (token_hash) DO NOTHING
    RETURNING agent_id
)
SELECT agent_id FROM inserted
UNION ALL
SELECT agent_id FROM agent_tokens WHERE token_hash = $2
LIMIT 1;

-- Command transitions shared by the gateway and the dispatcher.

-- name: requeue_sent
-- A command that was marked sent but cannot reach its agent goes back to pending with its attempt
-- refunded. Guarded: only from sent, so a late ack or result is never undone.
UPDATE agent_commands
SET status = 'pending', attempts = greatest(attempts - 1, 0), ack_deadline = NULL
WHERE command_id = $1 AND status = 'sent';
