-- Queries run by the dispatcher.

-- name: agents_with_due_commands
-- Online agents that have something to send now (an offline agent's backlog waits for its NOTIFY).
SELECT DISTINCT c.agent_id
FROM agent_commands c JOIN agents a USING (agent_id)
WHERE c.status = 'pending' AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= now())
  AND a.status = 'online'
LIMIT $1;

-- name: open_commands_by_status
-- For the commands-by-status gauge; open statuses only (their partial indexes keep it cheap).
SELECT status, count(*) FROM agent_commands WHERE status IN ('pending', 'sent', 'acknowledged') GROUP BY status;
