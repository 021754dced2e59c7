-- The command lifecycle: every statement that changes agent_commands.status (§2).
-- Each is guarded by the status it expects, so a late or duplicate message never moves a row
-- backwards; each RETURNs the rows it moved, so the caller knows whether it applied.

-- name: claim
-- Claim up to $2 due commands of the agents in $1 and mark them sent in one statement, so the row
-- says sent (and is committed) before anything is published. SKIP LOCKED lets dispatcher replicas
-- share the work without sending a row twice. Commands of one session go one at a time in
-- created_at order. An agent's advertised concurrency (0 = no limit) caps what it has in flight,
-- and the send window $5 what it has sent and not yet acknowledged; both apply per agent before the
-- batch limit, so one agent's backlog never crowds out others.
-- The commit does not wait for its WAL flush (synchronous_commit off for this transaction only: ~0.13 ms
-- less per round on a command's way). The row is visible as sent the moment the commit returns, so
-- no ack can overtake it; only a crash of PostgreSQL itself can undo the last claims (the WAL writer
-- flushes within wal_writer_delay), and an undone claim is a pending row again: it is sent again and
-- the agent answers from its journal, so nothing is lost and nothing runs twice. Creates, acks and
-- results wait for the flush.
WITH async_commit AS (
    SELECT set_config('synchronous_commit', 'off', true)
),
slots AS (
    SELECT a.agent_id,
           least(CASE WHEN a.concurrency > 0 THEN greatest(a.concurrency - (
                     SELECT count(*) FROM agent_commands f
                     WHERE f.agent_id = a.agent_id AND f.status IN ('sent', 'acknowledged')), 0)
                 ELSE $2 END,
                 greatest($5 - (SELECT count(*) FROM agent_commands f
                                WHERE f.agent_id = a.agent_id AND f.status = 'sent'), 0)) AS free
    FROM agents a
    WHERE a.agent_id = ANY($1::text[])
    ORDER BY random()  -- no agent is always first in line when the batch limit cuts
),
candidates AS (
    SELECT due.id
    FROM slots CROSS JOIN LATERAL (
        SELECT c.id
        FROM agent_commands c
        WHERE c.status = 'pending'
          AND c.agent_id = slots.agent_id
          AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= now())
          AND (c.session_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM agent_commands earlier
                WHERE earlier.session_id = c.session_id
                  AND earlier.id <> c.id
                  AND (earlier.status IN ('sent', 'acknowledged')
                       OR (earlier.status = 'pending'
                           AND (earlier.created_at, earlier.id) < (c.created_at, c.id)))))
        ORDER BY c.created_at
        LIMIT slots.free
        FOR UPDATE OF c SKIP LOCKED
    ) AS due
    LIMIT $2
)
UPDATE agent_commands c
SET status = 'sent', sent_at = now(), attempts = c.attempts + 1, next_attempt_at = NULL,
    retry_scheduled_at = NULL, ack_deadline = now() + make_interval(secs => $3), dispatched_by = $4,
    epoch = (SELECT l.epoch FROM agent_leases l WHERE l.agent_id = c.agent_id)
FROM candidates, async_commit
WHERE c.id = candidates.id
RETURNING c.command_id, c.agent_id, c.session_id, c.action, c.payload, c.attempts, c.epoch;

-- name: requeue_sent
-- Commands marked sent that cannot reach their agent go back to pending with the attempt refunded.
-- $1 command ids, $2 the attempts each had when claimed. Guarded by status (a late ack or result is
-- never undone) and by attempts (a requeue arriving late never undoes a newer claim of the row).
UPDATE agent_commands c
SET status = 'pending', attempts = greatest(c.attempts - 1, 0), ack_deadline = NULL
FROM unnest($1::text[], $2::int[]) AS sent(command_id, attempts)
WHERE c.command_id = sent.command_id AND c.attempts = sent.attempts AND c.status = 'sent'
RETURNING c.command_id;

-- name: record_frames
-- The acks and results read from agent sockets since the last flush, in one statement (§2 step 5):
-- $1 command ids, $2 the agent each frame came from (a foreign or late frame matches nothing), $3 the
-- lease epoch of the socket it came from: it must be the lease's epoch now (a demoted replica, a
-- standby, is refused), and NULL (a socket without HA) only for an agent that has no lease at all: a
-- frame without an epoch never slips through for an agent run with HA, $4 statuses (NULL: an ack; else the result's status), $5
-- results (JSON text or NULL), $6 errors, $7 retryable flags, $8 the replica that delivered them.
-- An ack moves sent -> acknowledged; a result moves sent | acknowledged -> completed | failed, or back
-- to pending after the one backoff policy (streamspace_retry_delay, migration 0005) when it is a
-- retryable failure with attempts left (the attempt it used stays spent). The caller sends at most one
-- frame per command: UPDATE ... FROM applies only one of several matches.
-- The rows are found by command_id alone (`found`), and the agent compared there: with `c.agent_id =
-- f.agent_id` in the UPDATE's own WHERE, a table never analyzed yet (a fresh burst: 100,000 commands
-- bulk-created for one agent) was planned through agent_commands_open_by_action, walking the agent's
-- open rows once per frame: 2 s a flush, acks past their deadline, commands sent five times.
WITH frame AS (
    SELECT f.*, f.status = 'failed' AND f.retryable AS may_retry
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bool[])
         AS f(command_id, agent_id, epoch, status, result, error, retryable)
), found AS MATERIALIZED (
    SELECT c.id, c.agent_id AS row_agent, f.* FROM frame f JOIN agent_commands c ON c.command_id = f.command_id
)
UPDATE agent_commands c
SET status = CASE WHEN f.status IS NULL THEN 'acknowledged'
                  WHEN f.may_retry AND c.attempts < c.max_attempts THEN 'pending'
                  ELSE f.status END,
    result = CASE WHEN f.status IS NULL THEN c.result ELSE f.result::jsonb END,
    error_message = CASE WHEN f.status IS NULL THEN c.error_message ELSE f.error END,
    completed_at = CASE WHEN f.status IS NULL OR (f.may_retry AND c.attempts < c.max_attempts)
                        THEN NULL ELSE now() END,
    next_attempt_at = CASE WHEN f.may_retry AND c.attempts < c.max_attempts
                           THEN now() + streamspace_retry_delay(c.attempts) END,
    ack_deadline = NULL,
    acknowledged_at = CASE WHEN f.status IS NULL THEN now() ELSE coalesce(c.acknowledged_at, now()) END,
    delivered_via_pod = CASE WHEN f.status IS NULL THEN $8 ELSE coalesce(c.delivered_via_pod, $8) END
FROM found f
WHERE c.id = f.id AND f.row_agent = f.agent_id
  AND (c.status = 'sent' OR (c.status = 'acknowledged' AND f.status IS NOT NULL))
  AND f.epoch IS NOT DISTINCT FROM (SELECT l.epoch FROM agent_leases l WHERE l.agent_id = f.agent_id)
RETURNING c.command_id, c.status, f.status IS NULL AS is_ack;

-- name: requeue_unseen
-- On an agent's hello (agents that announce the inventory feature only): its commands marked sent or
-- acknowledged BEFORE this socket registered ($2) that the agent neither runs nor holds a result for
-- ($3) were lost with an earlier socket or process. They go back to pending at once, or fail once
-- max_attempts is spent. The attempt is not refunded: a command that kills its agent would otherwise
-- be delivered forever. Rows claimed after the registration may still be on the wire: never touched.
UPDATE agent_commands
SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
    error_message = CASE WHEN attempts >= max_attempts
                         THEN format('agent %s lost the command (reconnected without it) after %s attempt(s)',
                                     agent_id, attempts)
                         ELSE format('agent %s lost the command (reconnected without it) (attempt %s)',
                                     agent_id, attempts) END,
    completed_at = CASE WHEN attempts >= max_attempts THEN now() END,
    next_attempt_at = NULL,
    ack_deadline = NULL
WHERE agent_id = $1 AND status IN ('sent', 'acknowledged') AND sent_at < $2
  AND command_id <> ALL($3::text[])
RETURNING command_id, status, attempts;

-- name: expire_deadlines
-- Sent but not acknowledged by its ack deadline, or acknowledged but not finished within its
-- timeout_seconds (NULL: $1, the dispatchers' COMMAND_TIMEOUT): back to pending after the one backoff
-- policy (streamspace_retry_delay), or failed with a reason naming the agent and the time once
-- max_attempts is spent. SKIP LOCKED and the guards let replicas run it at the same time.
WITH expired AS (
    SELECT id, status AS was FROM agent_commands
    WHERE status IN ('sent', 'acknowledged')
      AND ((status = 'sent' AND ack_deadline < now())
           OR (status = 'acknowledged'
               AND acknowledged_at + make_interval(secs => coalesce(timeout_seconds, $1)) < now()))
    FOR UPDATE SKIP LOCKED
)
UPDATE agent_commands c
SET status = CASE WHEN c.attempts >= c.max_attempts THEN 'failed' ELSE 'pending' END,
    error_message = CASE
        WHEN expired.was = 'sent' AND c.attempts < c.max_attempts
            THEN format('no acknowledgement from agent %s by its deadline (attempt %s)', c.agent_id, c.attempts)
        WHEN expired.was = 'sent'
            THEN format('no acknowledgement from agent %s after %s attempt(s)', c.agent_id, c.attempts)
        ELSE format('agent %s acknowledged at %s and did not finish within %s s, %s',
                    c.agent_id, to_char(c.acknowledged_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                    coalesce(c.timeout_seconds, $1),
                    CASE WHEN c.attempts < c.max_attempts THEN format('(attempt %s)', c.attempts)
                         ELSE format('after %s attempt(s)', c.attempts) END)
    END,
    completed_at = CASE WHEN c.attempts >= c.max_attempts THEN now() END,
    next_attempt_at = CASE WHEN c.attempts < c.max_attempts THEN now() + streamspace_retry_delay(c.attempts) END,
    ack_deadline = NULL
FROM expired
WHERE c.id = expired.id
RETURNING c.command_id, c.agent_id, c.status, c.attempts, expired.was;

-- name: cancel
-- pending | sent | acknowledged -> cancelled, by an operator ($2: the reason). It is never delivered
-- again, and a late ack or result matches nothing (their moves are guarded by sent/acknowledged).
-- A command that was sent or acknowledged may be running on its agent: if the agent advertises the
-- CANCEL_COMMAND capability, a CANCEL_COMMAND command naming it is inserted in the same statement and
-- goes the way of every command (claimed, signed, forwarded), so the agent stops the handler. It
-- expires if still pending after 10 minutes (the agent is away: it has nothing to stop when it comes
-- back, having lost the command with its socket or answering from its journal). An agent of an earlier
-- release advertises no such capability: it runs the command to completion, its result discarded.
WITH target AS (
    SELECT id, status AS was FROM agent_commands
    WHERE command_id = $1 AND status IN ('pending', 'sent', 'acknowledged')
    FOR UPDATE
), cancelled AS (
    UPDATE agent_commands c
    SET status = 'cancelled', completed_at = now(), next_attempt_at = NULL, ack_deadline = NULL, error_message = $2
    FROM target
    WHERE c.id = target.id
    RETURNING c.command_id, c.agent_id, c.status, target.was
), told AS (
    INSERT INTO agent_commands (agent_id, action, payload, max_attempts, timeout_seconds, expires_at)
    SELECT cancelled.agent_id, 'CANCEL_COMMAND', jsonb_build_object('command_id', cancelled.command_id, 'reason', $2),
           3, 60, now() + interval '10 minutes'
    FROM cancelled JOIN agents a USING (agent_id)
    WHERE cancelled.was IN ('sent', 'acknowledged') AND a.capabilities ? 'CANCEL_COMMAND' AND a.deleted_at IS NULL
    RETURNING command_id
)
SELECT cancelled.command_id, cancelled.status, cancelled.was, (SELECT command_id FROM told) AS cancel_id
FROM cancelled;

-- name: cancel_for_agent
-- Draining an agent ($1): every open command of it -> cancelled with the reason $2. No CANCEL_COMMAND
-- is sent: the agent's tokens are revoked in the same transaction and its sockets close.
UPDATE agent_commands
SET status = 'cancelled', completed_at = now(), next_attempt_at = NULL, ack_deadline = NULL, error_message = $2
WHERE agent_id = $1 AND status IN ('pending', 'sent', 'acknowledged')
RETURNING command_id;

-- name: expire_pending
-- Pending past its expires_at -> expired, up to $1 rows a round (the dispatchers' sweep; SKIP LOCKED
-- lets replicas run it at once), with a reason naming the agent and whether it ever reached it.
WITH due AS (
    SELECT id FROM agent_commands
    WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= now()
    ORDER BY expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE agent_commands c
SET status = 'expired', completed_at = now(), next_attempt_at = NULL, ack_deadline = NULL,
    error_message = format('expired at %s while pending for agent %s (%s attempt(s) made)',
                           to_char(c.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), c.agent_id,
                           c.attempts)
FROM due
WHERE c.id = due.id
RETURNING c.command_id, c.agent_id, c.attempts;

-- name: requeue_other_epochs
-- An HA agent's new active replica took the lease at epoch $2: its commands sent or acknowledged under
-- another epoch (delivered to a replica that is gone or demoted) go back to pending at once, to be
-- delivered to it; the attempt is not refunded (they may have run), and a spent one fails.
UPDATE agent_commands
SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
    error_message = format('agent %s changed its active replica (epoch %s to %s) %s', agent_id, epoch, $2,
                           CASE WHEN attempts >= max_attempts THEN format('after %s attempt(s)', attempts)
                                ELSE format('(attempt %s)', attempts) END),
    completed_at = CASE WHEN attempts >= max_attempts THEN now() END,
    next_attempt_at = NULL,
    ack_deadline = NULL
WHERE agent_id = $1 AND status IN ('sent', 'acknowledged') AND epoch IS DISTINCT FROM $2
RETURNING command_id, status;
