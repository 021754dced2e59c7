-- The session lifecycle: every statement that changes sessions.state or desired_state (§5). The moves
-- driven by what agents report (a session command ending, an inventory) are the triggers of migration
-- 0008; these are the moves the control plane makes itself, each with the command that carries it.

-- name: lock_user_placement
-- A user's quota is decided one creation (or wake) of that user at a time: two of them never both take the
-- user's last slot. Other users' creations do not wait (two-key advisory lock: the class, the user). Held
-- to the end of the transaction; always taken before lock_agent_placement (one order: no deadlock).
SELECT pg_advisory_xact_lock(hashtext('streamspace_session_user'), hashtext($1::text));

-- name: lock_agent_placement
-- An agent's free slots are taken one at a time: two creations never both take its last one. Creations
-- placed on other agents do not wait. The load is counted again after it (agent_has_room): a statement
-- started after the lock sees every session committed by whoever held it before.
SELECT pg_advisory_xact_lock(hashtext('streamspace_session_agent'), hashtext($1::text));

-- name: try_lock_agent_placement
-- lock_agent_placement, unless another creation holds it now (false): the creation picks another agent.
SELECT pg_try_advisory_xact_lock(hashtext('streamspace_session_agent'), hashtext($1::text));

-- name: agent_has_room
-- Whether agent $1 still has a free slot (max_sessions 0: no limit), counted under its placement lock.
SELECT a.max_sessions = 0 OR (
    SELECT count(*) FROM sessions s WHERE s.agent_id = a.agent_id AND s.state NOT IN ('stopped', 'failed', 'lost')
) < a.max_sessions
FROM agents a WHERE a.agent_id = $1;

-- name: session_owner_and_agent
-- Whom a session belongs to and where it runs: the locks a wake takes (its user's, its agent's).
SELECT user_id, agent_id FROM sessions WHERE id = $1::uuid;

-- name: user_session_count
-- The sessions that count against a user's quota: not deleted, not stopped, failed or lost.
SELECT count(*) FROM sessions
WHERE user_id = $1 AND deleted_at IS NULL AND state NOT IN ('stopped', 'failed', 'lost');

-- name: room_to_wake
-- For waking a session that counts against nothing (stopped or failed): its owner's sessions that do
-- count, and its agent's load and advertised max_sessions (0: no limit). No row: not such a session.
SELECT s.user_id,
       (SELECT count(*) FROM sessions u
        WHERE u.user_id = s.user_id AND u.deleted_at IS NULL AND u.state NOT IN ('stopped', 'failed', 'lost')) AS owned,
       a.max_sessions,
       (SELECT count(*) FROM sessions l
        WHERE l.agent_id = s.agent_id AND l.state NOT IN ('stopped', 'failed', 'lost')) AS load
FROM sessions s JOIN agents a USING (agent_id)
WHERE s.id = $1::uuid AND s.deleted_at IS NULL AND s.state IN ('stopped', 'failed');

-- name: pick_agent
-- The least loaded online agent that runs sessions on an allowed platform ($1: JSON array, empty = any),
-- of platform $2 and id $3 when given, with a free slot (max_sessions 0: no limit). Load counts every
-- session whose workload may exist (deleted ones until the agent confirms they are gone). Online means
-- a heartbeat within $4 seconds too: a row left 'online' by a gateway that died is not an agent. Not one of
-- $5: agents another creation is placing on right now (their lock is held) or found full under their lock.
SELECT a.agent_id, a.platform, load.sessions
FROM agents a
CROSS JOIN LATERAL (
    SELECT count(*) AS sessions FROM sessions s
    WHERE s.agent_id = a.agent_id AND s.state NOT IN ('stopped', 'failed', 'lost')
) AS load
WHERE a.status = 'online' AND a.last_heartbeat > now() - make_interval(secs => $4) AND a.deleted_at IS NULL
  AND a.capabilities ? 'CREATE_SESSION'
  AND (jsonb_array_length($1::jsonb) = 0 OR $1::jsonb ? a.platform)
  AND ($2::text IS NULL OR a.platform = $2)
  AND ($3::text IS NULL OR a.agent_id = $3)
  AND (a.max_sessions = 0 OR load.sessions < a.max_sessions)
  AND NOT (a.agent_id = ANY($5::text[]))
ORDER BY load.sessions, random()
LIMIT 1;

-- name: fitting_agents
-- Why no agent was picked: how many online agents would fit if capacity were ignored.
SELECT count(*) FROM agents a
WHERE a.status = 'online' AND a.last_heartbeat > now() - make_interval(secs => $4) AND a.deleted_at IS NULL
  AND a.capabilities ? 'CREATE_SESSION'
  AND (jsonb_array_length($1::jsonb) = 0 OR $1::jsonb ? a.platform)
  AND ($2::text IS NULL OR a.platform = $2)
  AND ($3::text IS NULL OR a.agent_id = $3);

-- name: create_session
-- The session and its CREATE_SESSION command, in one statement ($7: the payload without session_id;
-- $8: the session's name, NULL: none).
WITH made AS (
    INSERT INTO sessions (id, user_id, template, agent_id, platform, idle_timeout_seconds, name)
    VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $8)
    RETURNING *
), command AS (
    INSERT INTO agent_commands (agent_id, action, payload, session_id)
    SELECT made.agent_id, 'CREATE_SESSION', $7::jsonb || jsonb_build_object('session_id', made.id::text), made.id::text
    FROM made
    RETURNING command_id
)
SELECT made.*, (SELECT command_id FROM command) AS command_id FROM made;

-- name: request
-- A verb on a session ($1), as one statement: desired_state becomes $2, state $3 (NULL: unchanged),
-- deleted_at is set when $2 is 'deleted', and the command $4 is inserted. Applies only when the
-- session is not deleted, its desired state is one of $5, and the verb is not already asked for
-- (desired_state = $2 and not failed): a repeated verb changes nothing. No row: nothing was done.
-- A lost session takes no verb (its agent is gone): it is only deleted, by delete_lost.
WITH moved AS (
    UPDATE sessions
    SET desired_state = $2, state = coalesce($3, state),
        deleted_at = CASE WHEN $2 = 'deleted' THEN now() END,
        state_changed_at = CASE WHEN $3 IS NULL OR $3 = state THEN state_changed_at ELSE now() END
    WHERE id = $1::uuid AND deleted_at IS NULL AND state <> 'lost'
      AND desired_state = ANY($5::text[])
      AND NOT (desired_state = $2 AND state <> 'failed')
    RETURNING *
), command AS (
    INSERT INTO agent_commands (agent_id, action, payload, session_id)
    SELECT agent_id, $4, jsonb_build_object('session_id', id::text), id::text FROM moved
    RETURNING command_id
)
SELECT moved.*, (SELECT command_id FROM command) AS command_id FROM moved;

-- name: touch_activity
-- The user used the session: the idle clock starts again.
UPDATE sessions SET last_activity_at = now()
WHERE id = $1::uuid AND deleted_at IS NULL
RETURNING *;

-- name: sessions_by_state
-- For the sessions-by-state gauge of the dispatcher (its idle round): sessions not deleted, by state.
SELECT state, count(*) FROM sessions WHERE deleted_at IS NULL GROUP BY state;

-- name: hibernate_idle
-- Running sessions idle past their idle timeout, with no command in flight, are asked to hibernate
-- (up to $1 per round; SKIP LOCKED lets dispatcher replicas share the work). Returns what it asked.
WITH idle AS (
    SELECT s.id FROM sessions s
    WHERE s.state = 'running' AND s.desired_state = 'running' AND s.deleted_at IS NULL
      AND s.idle_timeout_seconds > 0
      AND s.last_activity_at + make_interval(secs => s.idle_timeout_seconds) < now()
      AND NOT EXISTS (SELECT 1 FROM agent_commands c
                      WHERE c.session_id = s.id::text AND c.status IN ('pending', 'sent', 'acknowledged'))
    ORDER BY s.last_activity_at
    LIMIT $1
    FOR UPDATE OF s SKIP LOCKED
), moved AS (
    UPDATE sessions s SET desired_state = 'hibernated'
    FROM idle WHERE s.id = idle.id
    RETURNING s.id, s.agent_id, s.user_id, s.last_activity_at, s.idle_timeout_seconds
), command AS (
    INSERT INTO agent_commands (agent_id, action, payload, session_id)
    SELECT agent_id, 'HIBERNATE_SESSION', jsonb_build_object('session_id', id::text), id::text FROM moved
)
SELECT id::text, agent_id, user_id::text, last_activity_at, idle_timeout_seconds FROM moved;

-- name: request_inventories
-- Reconciliation round: an INVENTORY_SESSIONS command for every online agent that runs sessions and
-- has none open (the same as the trigger on (re)connect, for every agent) and a heartbeat within $2
-- seconds (a row left 'online' by a gateway that died is skipped). Returns the agents asked.
INSERT INTO agent_commands (agent_id, action, max_attempts, timeout_seconds)
SELECT a.agent_id, 'INVENTORY_SESSIONS', 3, $1
FROM agents a
WHERE a.status = 'online' AND a.last_heartbeat > now() - make_interval(secs => $2) AND a.deleted_at IS NULL
  AND a.capabilities ? 'INVENTORY_SESSIONS'
  AND NOT EXISTS (SELECT 1 FROM agent_commands c
                  WHERE c.agent_id = a.agent_id AND c.action = 'INVENTORY_SESSIONS'
                    AND c.status IN ('pending', 'sent', 'acknowledged'))
RETURNING agent_id;

-- name: delete_lost
-- Deleting a lost session removes its row at once: there is no agent to ask (a workload its agent
-- still holds, should the agent come back, carries our labels and no session owns it: the next
-- inventory sends DELETE_SESSION for it). No row: not a lost session.
DELETE FROM sessions WHERE id = $1::uuid AND state = 'lost' AND deleted_at IS NULL
RETURNING *, NULL::text AS command_id;

-- name: lose_agent_sessions
-- Draining agent $1: every session on it is lost, with the reason $2 (whatever its state: the agent
-- and what it held are gone for good). Sessions already deleted by their user are removed: there is
-- no agent left to confirm their workload gone. Run after the agent's commands are cancelled (their
-- trigger would fail the sessions; lost is final and the trigger leaves it alone).
WITH removed AS (
    DELETE FROM sessions WHERE agent_id = $1 AND deleted_at IS NOT NULL
)
UPDATE sessions
SET state = 'lost', reason = $2, endpoint_host = NULL, endpoint_port = NULL, state_changed_at = now()
WHERE agent_id = $1 AND deleted_at IS NULL AND state <> 'lost'
RETURNING id::text;

-- name: lose_gone_agents_sessions
-- Reconciliation round: the live sessions (pending to stopping) of agents without a heartbeat for $1
-- seconds (AGENT_LOST_AFTER; offline, or 'online' on a gateway that died) are lost, with the reason.
-- Up to $2 a round. Stopped and failed ones stay: nothing of theirs runs, and a wake waits for the agent.
WITH gone AS (
    SELECT s.id, a.agent_id, a.last_heartbeat FROM sessions s JOIN agents a USING (agent_id)
    WHERE s.deleted_at IS NULL AND s.state IN ('pending', 'starting', 'running', 'hibernated', 'stopping')
      AND coalesce(a.last_heartbeat, '-infinity') < now() - make_interval(secs => $1)
    LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE sessions s
SET state = 'lost', endpoint_host = NULL, endpoint_port = NULL, state_changed_at = now(),
    reason = format('agent %s gone since %s, longer than AGENT_LOST_AFTER (%s s)', gone.agent_id,
                    coalesce(to_char(gone.last_heartbeat AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), 'ever'), $1)
FROM gone
WHERE s.id = gone.id
RETURNING s.id::text, s.agent_id;
