-- Queries run by the dispatcher.

-- name: agents_with_due_commands
-- Online agents that have something to send now (an offline agent's backlog waits for its NOTIFY).
SELECT DISTINCT c.agent_id
FROM agent_commands c JOIN agents a USING (agent_id)
WHERE c.status = 'pending' AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= now())
  AND a.status = 'online'
LIMIT $1;
