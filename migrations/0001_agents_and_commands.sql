-- Agents, their tokens, and the command table with its updated_at and NOTIFY triggers (§2, §3).

CREATE TABLE agents (
    agent_id        varchar(255) PRIMARY KEY,
    status          varchar(16)  NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline')),
    gateway_pod     varchar(255),
    platform        varchar(64),
    version         varchar(64),
    capabilities    jsonb        NOT NULL DEFAULT '[]',
    concurrency     integer      NOT NULL DEFAULT 0,
    instance_id     varchar(255),
    last_heartbeat  timestamptz,
    connected_at    timestamptz,
    created_at      timestamptz  NOT NULL DEFAULT now(),
    updated_at      timestamptz  NOT NULL DEFAULT now()
);

-- Tokens are random 256-bit strings, so an unsalted SHA-256 is enough to make a leaked table useless.
CREATE TABLE agent_tokens (
    id          uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id    varchar(255) NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    token_hash  char(64)     NOT NULL UNIQUE,
    created_at  timestamptz  NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE agent_commands (
    id                 uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    command_id         varchar(255) NOT NULL UNIQUE DEFAULT gen_random_uuid()::text,
    agent_id           varchar(255) NOT NULL REFERENCES agents (agent_id),
    session_id         varchar(255),
    action             varchar(64)  NOT NULL,
    payload            jsonb        NOT NULL DEFAULT '{}',
    status             varchar(32)  NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'sent', 'acknowledged', 'completed', 'failed', 'cancelled')),
    error_message      text,
    result             jsonb,
    attempts           integer      NOT NULL DEFAULT 0,
    max_attempts       integer      NOT NULL DEFAULT 5,
    next_attempt_at    timestamptz,
    ack_deadline       timestamptz,
    dispatched_by      varchar(255),
    delivered_via_pod  varchar(255),
    created_at         timestamptz  NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    acknowledged_at    timestamptz,
    completed_at       timestamptz,
    updated_at         timestamptz  NOT NULL DEFAULT now()
);

CREATE INDEX agent_commands_pending ON agent_commands (agent_id, created_at) WHERE status = 'pending';
CREATE INDEX agent_commands_in_flight ON agent_commands (status, ack_deadline) WHERE status IN ('sent', 'acknowledged');
CREATE INDEX agent_commands_session ON agent_commands (session_id, created_at) WHERE session_id IS NOT NULL;

-- clock_timestamp(), not now(): two updates in one transaction still move updated_at.
CREATE FUNCTION streamspace_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

CREATE TRIGGER agents_touch BEFORE UPDATE ON agents
    FOR EACH ROW EXECUTE FUNCTION streamspace_touch_updated_at();
CREATE TRIGGER agent_commands_touch BEFORE UPDATE ON agent_commands
    FOR EACH ROW EXECUTE FUNCTION streamspace_touch_updated_at();

-- Wake the dispatchers (channel streamspace_dispatch, payload = agent id) whenever there may be
-- something new to send: a row becomes pending, or a session's in-flight command finishes so the
-- next command of that session may go.
CREATE FUNCTION streamspace_notify_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' AND (TG_OP = 'INSERT' OR OLD.status <> 'pending')
       OR (TG_OP = 'UPDATE' AND NEW.session_id IS NOT NULL
           AND OLD.status IN ('sent', 'acknowledged') AND NEW.status <> OLD.status) THEN
        PERFORM pg_notify('streamspace_dispatch', NEW.agent_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER agent_commands_notify AFTER INSERT OR UPDATE OF status ON agent_commands
    FOR EACH ROW EXECUTE FUNCTION streamspace_notify_command();

-- An agent coming online (or moving replica) gets its waiting commands at once.
CREATE FUNCTION streamspace_notify_agent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'online'
       AND (TG_OP = 'INSERT' OR OLD.status <> 'online' OR OLD.gateway_pod IS DISTINCT FROM NEW.gateway_pod) THEN
        PERFORM pg_notify('streamspace_dispatch', NEW.agent_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER agents_notify AFTER INSERT OR UPDATE OF status, gateway_pod ON agents
    FOR EACH ROW EXECUTE FUNCTION streamspace_notify_agent();
