-- One wake-up per INSERT statement, not per row (issue 27: the bulk path, and any INSERT ... SELECT or
-- COPY of many commands by hand).
--
-- Until now a row trigger woke the dispatchers once per inserted row. PostgreSQL folds identical
-- NOTIFYs of one transaction, so 1,000 rows for one agent were one NOTIFY already, but 1,000 rows for
-- 1,000 agents were 1,000 NOTIFYs (and 1,000 callbacks in every dispatcher). Now a statement trigger
-- reads the statement's new rows (a transition table) and wakes once: with the agent id when every
-- pending row is for one agent, as before, else with '*' (keys.DISPATCH_EVERY_AGENT; no agent id
-- starts with '*'), on which a dispatcher scans every agent with due commands.
--
-- A dispatcher of the previous release takes '*' for an agent id and finds nothing: it sends those
-- commands at its next sweep (SWEEP_INTERVAL). Only statements inserting for several agents at once
-- (new: the bulk API) send '*'.
--
-- A transition table cannot go on a trigger of more than one event, nor on one with a column list:
-- the row trigger keeps UPDATE OF status (a row put back to pending, a slot freed), INSERT moves here.

DROP TRIGGER agent_commands_notify ON agent_commands;
CREATE TRIGGER agent_commands_notify AFTER UPDATE OF status ON agent_commands
    FOR EACH ROW EXECUTE FUNCTION streamspace_notify_command();

CREATE FUNCTION streamspace_notify_inserted_commands() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    first_agent text;
    last_agent text;
BEGIN
    SELECT min(agent_id), max(agent_id) INTO first_agent, last_agent
    FROM inserted_commands WHERE status = 'pending';
    IF first_agent IS NOT NULL THEN
        PERFORM streamspace_wake_dispatchers(CASE WHEN first_agent = last_agent THEN first_agent ELSE '*' END);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER agent_commands_notify_inserted AFTER INSERT ON agent_commands
    REFERENCING NEW TABLE AS inserted_commands
    FOR EACH STATEMENT EXECUTE FUNCTION streamspace_notify_inserted_commands();
