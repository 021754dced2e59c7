-- Also wake the dispatchers when a command of an agent with a concurrency limit leaves sent or
-- acknowledged: a slot is free, so that agent's next command may go now rather than at the sweep.
CREATE OR REPLACE FUNCTION streamspace_notify_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' AND (TG_OP = 'INSERT' OR OLD.status <> 'pending')
       OR (TG_OP = 'UPDATE' AND OLD.status IN ('sent', 'acknowledged') AND NEW.status <> OLD.status
           AND (NEW.session_id IS NOT NULL
                OR EXISTS (SELECT 1 FROM agents WHERE agent_id = NEW.agent_id AND concurrency > 0))) THEN
        PERFORM pg_notify('streamspace_dispatch', NEW.agent_id);
    END IF;
    RETURN NULL;
END $$;
