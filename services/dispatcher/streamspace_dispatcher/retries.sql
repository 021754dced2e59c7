-- Retries through RabbitMQ (retries.py). The waits themselves are rows: pending, next_attempt_at ahead.

-- name: schedule_waits
-- Up to $1 waits no dispatcher has put on a RabbitMQ queue yet, marked in the caller's transaction
-- (SKIP LOCKED: replicas never take the same one), with the seconds left.
WITH waits AS (
    SELECT id FROM agent_commands
    WHERE status = 'pending' AND next_attempt_at IS NOT NULL AND retry_scheduled_at IS NULL
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE agent_commands c SET retry_scheduled_at = now()
FROM waits WHERE c.id = waits.id
RETURNING c.command_id, c.attempts,
          extract(epoch FROM c.next_attempt_at - now())::float8 AS wait_seconds;

-- name: remaining_wait
-- Seconds until the wait of this command at this attempt is over (negative: overdue); no row if it
-- is not waiting at that attempt any more.
SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM agent_commands
WHERE command_id = $1 AND attempts = $2 AND status = 'pending' AND next_attempt_at IS NOT NULL;

-- name: due_now
-- The wait is over (or within the shortest step of over): claimable now.
UPDATE agent_commands SET next_attempt_at = now()
WHERE command_id = $1 AND attempts = $2 AND status = 'pending' AND next_attempt_at > now();
