-- The command state machine, enforced by the database itself (§2): a status change that is not an
-- allowed move is refused, whoever writes it (a service, an operator in psql). The allowed moves are
-- the same as streamspace_common.commands.TRANSITIONS; tests check that the two agree.
CREATE FUNCTION streamspace_command_transition_allowed(old_status text, new_status text)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE old_status
        WHEN 'pending'      THEN new_status IN ('sent', 'cancelled', 'failed')
        WHEN 'sent'         THEN new_status IN ('pending', 'acknowledged', 'completed', 'failed', 'cancelled')
        WHEN 'acknowledged' THEN new_status IN ('pending', 'completed', 'failed', 'cancelled')
        ELSE false  -- completed, failed and cancelled are final
    END
$$;

CREATE FUNCTION streamspace_guard_command_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT streamspace_command_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'command % cannot move from % to %', OLD.command_id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER agent_commands_guard_transition BEFORE UPDATE OF status ON agent_commands
    FOR EACH ROW EXECUTE FUNCTION streamspace_guard_command_transition();
