-- Queries run by the dispatcher.

-- name: agents_with_due_commands
-- Online agents that have something to send now (an offline agent's backlog waits for its NOTIFY).
-- A skip scan of the pending index (agent_commands_pending): one probe per agent that has pending
-- rows, stepping from one agent id to the next, whatever the backlog behind each and whatever the
-- number of agents online. Probing every online agent instead cost ~1 ms a round at 1,000 agents
-- online with nothing due, and far more under a fresh table's generic plan; reading every pending
-- row (a DISTINCT) cost 13 ms a round with a 10,000-row backlog for one agent.
WITH RECURSIVE due (agent_id) AS (
    (SELECT c.agent_id FROM agent_commands c
     WHERE c.status = 'pending' AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= now())
     ORDER BY c.agent_id LIMIT 1)
    UNION ALL
    SELECT (SELECT c.agent_id FROM agent_commands c
            WHERE c.status = 'pending' AND c.agent_id > due.agent_id
              AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= now())
            ORDER BY c.agent_id LIMIT 1)
    FROM due
    WHERE due.agent_id IS NOT NULL
)
SELECT a.agent_id
FROM due JOIN agents a ON a.agent_id = due.agent_id
WHERE a.status = 'online'
LIMIT $1;

-- name: open_commands_by_status
-- For the commands-by-status gauges; open statuses only (their partial indexes keep it cheap). `oldest`:
-- seconds since the longest-open command of the status entered it (pending: its last change).
SELECT status, count(*),
       extract(epoch FROM now() - min(CASE status WHEN 'sent' THEN coalesce(sent_at, updated_at)
                                                  WHEN 'acknowledged' THEN coalesce(acknowledged_at, updated_at)
                                                  ELSE updated_at END))::float8 AS oldest
FROM agent_commands WHERE status IN ('pending', 'sent', 'acknowledged') GROUP BY status;

-- name: pending_backlog_top
-- For the backlog gauge: the $1 agents with the most pending commands (due or waiting for a retry).
SELECT agent_id, count(*) FROM agent_commands WHERE status = 'pending'
GROUP BY agent_id ORDER BY count(*) DESC, agent_id LIMIT $1;

-- name: keep_streak
-- This dispatcher claims round after round: creating commits need not NOTIFY until $2 seconds from
-- now (migration 0009). Refreshed while the streak lasts; `until` only matters if it dies in one.
-- Not started while another dispatcher's streak is live (it claims every due agent round after round
-- already; two streaking dispatchers scan twice and contend for the same rows): no row, NULL back.
INSERT INTO dispatcher_streaks (dispatcher, until)
SELECT $1, clock_timestamp() + make_interval(secs => $2)
WHERE NOT EXISTS (SELECT 1 FROM dispatcher_streaks
                  WHERE dispatcher <> $1 AND until > clock_timestamp())
ON CONFLICT (dispatcher) DO UPDATE SET until = EXCLUDED.until
RETURNING true;

-- name: end_streak
-- This dispatcher's streak ends (and any streak already past its `until`: a dispatcher that died in one).
DELETE FROM dispatcher_streaks WHERE dispatcher = $1 OR until <= clock_timestamp();

-- name: creators_settled
-- True when no transaction that may have skipped its NOTIFY (it saw a streak) is still open: every
-- creating transaction holds the lock $1 (keys.DISPATCH_CREATORS_LOCK, migration 0009) shared until
-- it ends. A try, so a transaction left open for hours never blocks the dispatcher nor, queued behind
-- an exclusive request, the creators.
SELECT pg_try_advisory_xact_lock(hashtext($1));
