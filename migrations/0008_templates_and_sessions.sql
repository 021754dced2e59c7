-- Templates and sessions (issue 14, §5). A session's state is driven by the results of its commands:
-- the trigger below reads every session command that ends (and every inventory an agent reports), so
-- whichever path ends it (a gateway's result, a dispatcher's deadline, an operator's cancel) moves
-- the session too. The statements the services run live in libs/streamspace_common/sessions.sql.

CREATE TABLE templates (
    id                    uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    name                  varchar(64)   NOT NULL UNIQUE,
    description           text          NOT NULL DEFAULT '',
    image                 varchar(500)  NOT NULL DEFAULT '',   -- docker, kubernetes
    command               jsonb         NOT NULL DEFAULT '[]', -- local: argv, {port} and {python} substituted
    ports                 jsonb         NOT NULL DEFAULT '[]',
    cpu                   real          NOT NULL DEFAULT 0.5,
    memory                integer       NOT NULL DEFAULT 256,  -- MiB
    env                   jsonb         NOT NULL DEFAULT '{}',
    platforms             jsonb         NOT NULL DEFAULT '[]', -- allowed platforms; empty: every platform
    idle_timeout_seconds  integer       NOT NULL DEFAULT 0,    -- 0: never hibernated for idleness
    created_at            timestamptz   NOT NULL DEFAULT now(),
    updated_at            timestamptz   NOT NULL DEFAULT now()
);

CREATE TRIGGER templates_touch BEFORE UPDATE ON templates
    FOR EACH ROW EXECUTE FUNCTION streamspace_touch_updated_at();

-- desired_state: what the user (or the idle check) last asked for, so a verb repeated while its
-- command is in flight adds nothing (idempotent). deleted_at: DELETE was asked; the row is hidden from
-- the API at once and removed when the agent reports the workload gone.
CREATE TABLE sessions (
    id                    uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id               uuid          NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    template              varchar(64)   NOT NULL,
    agent_id              varchar(255)  NOT NULL REFERENCES agents (agent_id),
    platform              varchar(64)   NOT NULL,
    state                 varchar(16)   NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'starting', 'running', 'hibernated', 'stopping', 'stopped', 'failed')),
    desired_state         varchar(16)   NOT NULL DEFAULT 'running'
                          CHECK (desired_state IN ('running', 'hibernated', 'stopped', 'deleted')),
    reason                text,
    endpoint_host         varchar(255),
    endpoint_port         integer,
    idle_timeout_seconds  integer       NOT NULL DEFAULT 0,  -- the template's, when the session was made
    last_activity_at      timestamptz   NOT NULL DEFAULT now(),
    state_changed_at      timestamptz   NOT NULL DEFAULT now(),
    created_at            timestamptz   NOT NULL DEFAULT now(),
    updated_at            timestamptz   NOT NULL DEFAULT now(),
    deleted_at            timestamptz
);

CREATE INDEX sessions_user ON sessions (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
-- All rows, deleted ones too: an agent's load counts them until it confirms the workload is gone.
CREATE INDEX sessions_agent ON sessions (agent_id, state);
CREATE INDEX sessions_listed ON sessions (created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX sessions_idle ON sessions (last_activity_at) WHERE state = 'running' AND idle_timeout_seconds > 0;

CREATE TRIGGER sessions_touch BEFORE UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION streamspace_touch_updated_at();

-- Capacity: an agent advertises how many sessions it takes with the capability "max_sessions=N" in its
-- hello (AGENT_MAX_SESSIONS); an agent of an earlier release advertises nothing: 0, no limit.
ALTER TABLE agents ADD COLUMN max_sessions integer NOT NULL DEFAULT 0;

CREATE FUNCTION streamspace_agent_max_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.max_sessions := 0;
    IF jsonb_typeof(NEW.capabilities) = 'array' THEN
        NEW.max_sessions := coalesce((
            SELECT substring(c FROM '^max_sessions=([0-9]{1,9})$')::integer
            FROM jsonb_array_elements_text(NEW.capabilities) AS c
            WHERE c ~ '^max_sessions=[0-9]{1,9}$'
            LIMIT 1), 0);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER agents_max_sessions BEFORE INSERT OR UPDATE OF capabilities ON agents
    FOR EACH ROW EXECUTE FUNCTION streamspace_agent_max_sessions();

-- A session command that ends moves its session, unless a newer command of the same session is still
-- open (that one decides). The result of a completed one is a SessionReport {state, endpoint, reason}.
CREATE FUNCTION streamspace_session_command_moved() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sid uuid;
    reported text;
BEGIN
    IF NEW.session_id IS NULL
       OR NEW.session_id !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN NULL;
    END IF;
    sid := NEW.session_id::uuid;
    IF NEW.status = 'acknowledged' THEN
        UPDATE sessions SET state = 'starting', state_changed_at = now()
        WHERE id = sid AND state = 'pending' AND NEW.action = 'CREATE_SESSION';
        RETURN NULL;
    END IF;
    IF NEW.status NOT IN ('completed', 'failed', 'cancelled') THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM agent_commands c
               WHERE c.session_id = NEW.session_id AND c.id <> NEW.id
                 AND c.status IN ('pending', 'sent', 'acknowledged')
                 AND (c.created_at, c.id) > (NEW.created_at, NEW.id)) THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'completed' THEN
        reported := NEW.result ->> 'state';
        IF reported = 'deleted' THEN
            DELETE FROM sessions WHERE id = sid AND deleted_at IS NOT NULL;
            IF FOUND THEN
                RETURN NULL;
            END IF;
        END IF;
        UPDATE sessions
        SET state = CASE WHEN reported IN ('running', 'hibernated', 'stopped') THEN reported ELSE 'failed' END,
            reason = CASE WHEN reported IN ('running', 'hibernated', 'stopped') THEN NULL
                          ELSE coalesce(NEW.result ->> 'reason',
                                        format('%s reported state %s', NEW.action, coalesce(reported, 'none'))) END,
            endpoint_host = CASE WHEN reported = 'running' THEN NEW.result -> 'endpoint' ->> 'host' END,
            endpoint_port = CASE WHEN reported = 'running' THEN (NEW.result -> 'endpoint' ->> 'port')::integer END,
            last_activity_at = CASE WHEN reported = 'running' AND state <> 'running' THEN now()
                                    ELSE last_activity_at END,
            state_changed_at = now()
        WHERE id = sid;
    ELSE
        UPDATE sessions
        SET state = 'failed', endpoint_host = NULL, endpoint_port = NULL, state_changed_at = now(),
            reason = format('%s %s: %s', NEW.action, NEW.status, coalesce(NEW.error_message, 'no reason given'))
        WHERE id = sid;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER agent_commands_session_moved AFTER UPDATE OF status ON agent_commands
    FOR EACH ROW WHEN (NEW.session_id IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status
                       AND NEW.status IN ('acknowledged', 'completed', 'failed', 'cancelled')
                       AND NEW.action IN ('CREATE_SESSION', 'STOP_SESSION', 'HIBERNATE_SESSION',
                                          'WAKE_SESSION', 'DELETE_SESSION'))
    EXECUTE FUNCTION streamspace_session_command_moved();

-- Reconciliation: an agent's INVENTORY_SESSIONS result {"sessions": [{session_id, state}], "workloads":
-- [session ids of everything carrying its labels]} is compared with what the control plane believes.
-- A session believed running (or hibernated) that the agent lacks, or has but not running, is failed
-- with the reason; only sessions whose state was settled before the inventory was sent and that have
-- no command in flight are judged, so a session that changed meanwhile is left for the next round.
-- A workload no live session owns gets a DELETE_SESSION (the driver removes it).
CREATE FUNCTION streamspace_inventory_reported() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(NEW.result -> 'sessions') <> 'array' OR jsonb_typeof(NEW.result -> 'workloads') <> 'array' THEN
        RETURN NULL;
    END IF;
    UPDATE sessions s
    SET state = 'failed', endpoint_host = NULL, endpoint_port = NULL, state_changed_at = now(),
        reason = CASE WHEN seen.state IS NULL
                      THEN format('agent %s no longer has this session (inventory of %s)', s.agent_id,
                                  to_char(NEW.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                      ELSE format('agent %s found this session %s, not %s (inventory of %s)', s.agent_id,
                                  seen.state, s.state,
                                  to_char(NEW.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) END
    FROM sessions b
    LEFT JOIN jsonb_to_recordset(NEW.result -> 'sessions') AS seen(session_id text, state text)
           ON seen.session_id = b.id::text
    WHERE s.id = b.id
      AND b.agent_id = NEW.agent_id AND b.deleted_at IS NULL
      AND b.state IN ('running', 'hibernated')
      AND b.state_changed_at < NEW.sent_at
      AND NOT EXISTS (SELECT 1 FROM agent_commands c
                      WHERE c.session_id = b.id::text AND c.status IN ('pending', 'sent', 'acknowledged'))
      AND (seen.state IS NULL
           OR (b.state = 'running' AND seen.state <> 'running')
           OR (b.state = 'hibernated' AND seen.state NOT IN ('hibernated', 'stopped')));
    INSERT INTO agent_commands (agent_id, action, payload, session_id, max_attempts)
    SELECT NEW.agent_id, 'DELETE_SESSION', jsonb_build_object('session_id', w.id), w.id, 3
    FROM (SELECT DISTINCT value AS id FROM jsonb_array_elements_text(NEW.result -> 'workloads')) AS w
    WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.deleted_at IS NULL
                      AND s.id = CASE WHEN w.id ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                                      THEN w.id::uuid END)  -- the primary key, never a cast error
      AND NOT EXISTS (SELECT 1 FROM agent_commands c
                      WHERE c.session_id = w.id AND c.action = 'DELETE_SESSION'
                        AND c.status IN ('pending', 'sent', 'acknowledged'));
    RETURN NULL;
END $$;

CREATE TRIGGER agent_commands_inventory_reported AFTER UPDATE OF status ON agent_commands
    FOR EACH ROW WHEN (NEW.action = 'INVENTORY_SESSIONS' AND NEW.status = 'completed'
                       AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION streamspace_inventory_reported();

-- On every (re)connect of an agent that runs sessions of ours, ask for its inventory (unless a request
-- is already open). Agents that never held a session are reconciled by the dispatchers' periodic round.
CREATE FUNCTION streamspace_inventory_on_connect() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'online' AND NEW.capabilities ? 'INVENTORY_SESSIONS'
       AND (OLD.status <> 'online' OR OLD.connected_at IS DISTINCT FROM NEW.connected_at)
       AND EXISTS (SELECT 1 FROM sessions WHERE agent_id = NEW.agent_id)
       AND NOT EXISTS (SELECT 1 FROM agent_commands c
                       WHERE c.agent_id = NEW.agent_id AND c.action = 'INVENTORY_SESSIONS'
                         AND c.status IN ('pending', 'sent', 'acknowledged')) THEN
        INSERT INTO agent_commands (agent_id, action, max_attempts, timeout_seconds)
        VALUES (NEW.agent_id, 'INVENTORY_SESSIONS', 3, 120);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER agents_inventory_on_connect AFTER UPDATE OF status, connected_at ON agents
    FOR EACH ROW EXECUTE FUNCTION streamspace_inventory_on_connect();

CREATE INDEX agent_commands_open_by_action ON agent_commands (agent_id, action)
    WHERE status IN ('pending', 'sent', 'acknowledged');
