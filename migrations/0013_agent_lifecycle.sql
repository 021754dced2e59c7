-- Agent lifecycle (operations issue, item 2): retiring (draining) an agent, commands that expire,
-- sessions lost with their agent, and cancel reaching a command that already runs on its agent.

-- An agent deleted through DELETE /api/v1/agents/{id} keeps its row for history (its commands and
-- sessions refer to it): deleted_at says it was drained. Nothing is placed on it, no token is made for
-- it, and a socket naming it is refused (close code 4404).
ALTER TABLE agents ADD COLUMN deleted_at timestamptz;

-- A command may carry an expiry: still pending at expires_at, it ends `expired` (a new final status)
-- instead of waiting for its agent forever. Only pending rows expire: one already sent or acknowledged
-- is on its agent and ends as before (its deadlines, retries, or a cancel).
ALTER TABLE agent_commands ADD COLUMN expires_at timestamptz;
ALTER TABLE agent_commands DROP CONSTRAINT agent_commands_status_check;
ALTER TABLE agent_commands ADD CONSTRAINT agent_commands_status_check
    CHECK (status IN ('pending', 'sent', 'acknowledged', 'completed', 'failed', 'cancelled', 'expired'));
CREATE INDEX agent_commands_expiring ON agent_commands (expires_at)
    WHERE status = 'pending' AND expires_at IS NOT NULL;

-- The allowed moves (streamspace_common.commands.TRANSITIONS): pending -> expired is new.
CREATE OR REPLACE FUNCTION streamspace_command_transition_allowed(old_status text, new_status text)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE old_status
        WHEN 'pending'      THEN new_status IN ('sent', 'cancelled', 'failed', 'expired')
        WHEN 'sent'         THEN new_status IN ('pending', 'acknowledged', 'completed', 'failed', 'cancelled')
        WHEN 'acknowledged' THEN new_status IN ('pending', 'completed', 'failed', 'cancelled')
        ELSE false  -- completed, failed, cancelled and expired are final
    END
$$;

-- A session is `lost` when its agent was deleted, or gone longer than AGENT_LOST_AFTER (the
-- dispatchers' reconcile round). Final: it is never recreated elsewhere by itself; the user deletes
-- it (the row goes at once: there is no agent to ask) and creates a new one.
ALTER TABLE sessions DROP CONSTRAINT sessions_state_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_state_check
    CHECK (state IN ('pending', 'starting', 'running', 'hibernated', 'stopping', 'stopped', 'failed', 'lost'));

-- A session command that expires fails its session like a failed or cancelled one (migration 0008);
-- a lost session stays lost whatever its commands do afterwards.
CREATE OR REPLACE FUNCTION streamspace_session_command_moved() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF NEW.status NOT IN ('completed', 'failed', 'cancelled', 'expired') THEN
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
        WHERE id = sid AND state <> 'lost';
    ELSE
        UPDATE sessions
        SET state = 'failed', endpoint_host = NULL, endpoint_port = NULL, state_changed_at = now(),
            reason = format('%s %s: %s', NEW.action, NEW.status, coalesce(NEW.error_message, 'no reason given'))
        WHERE id = sid AND state <> 'lost';
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER agent_commands_session_moved ON agent_commands;
CREATE TRIGGER agent_commands_session_moved AFTER UPDATE OF status ON agent_commands
    FOR EACH ROW WHEN (NEW.session_id IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status
                       AND NEW.status IN ('acknowledged', 'completed', 'failed', 'cancelled', 'expired')
                       AND NEW.action IN ('CREATE_SESSION', 'STOP_SESSION', 'HIBERNATE_SESSION',
                                          'WAKE_SESSION', 'DELETE_SESSION'))
    EXECUTE FUNCTION streamspace_session_command_moved();
