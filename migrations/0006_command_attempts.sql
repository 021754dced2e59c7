-- Every attempt of a command that did not end it well, with its reason (issue 13, operators): a failed
-- command shows why each attempt ended. Written by a trigger, so every path records it (a dispatcher's
-- deadline, a gateway's result, an operator's cancel, psql by hand). Only attempts that end in a retry,
-- a failure or a cancel are recorded, so a command that completes first time costs no extra write.
CREATE TABLE agent_command_attempts (
    command_id        varchar(255) NOT NULL REFERENCES agent_commands (command_id) ON DELETE CASCADE,
    attempt           integer      NOT NULL,
    left_status       varchar(32)  NOT NULL,  -- sent (never acknowledged) or acknowledged
    outcome           varchar(32)  NOT NULL,  -- pending (retried), failed or cancelled
    reason            text,
    dispatched_by     varchar(255),
    delivered_via_pod varchar(255),
    sent_at           timestamptz,
    acknowledged_at   timestamptz,
    ended_at          timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (command_id, attempt)
);

CREATE FUNCTION streamspace_record_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.attempts < OLD.attempts THEN
        RETURN NULL;  -- a claim handed back before it reached the agent: refunded, not an attempt
    END IF;
    INSERT INTO agent_command_attempts (command_id, attempt, left_status, outcome, reason, dispatched_by,
                                        delivered_via_pod, sent_at, acknowledged_at)
    VALUES (OLD.command_id, OLD.attempts, OLD.status, NEW.status, NEW.error_message, OLD.dispatched_by,
            NEW.delivered_via_pod, OLD.sent_at, OLD.acknowledged_at)
    ON CONFLICT (command_id, attempt) DO UPDATE
        SET left_status = EXCLUDED.left_status, outcome = EXCLUDED.outcome, reason = EXCLUDED.reason,
            ended_at = EXCLUDED.ended_at;
    RETURN NULL;
END $$;

-- The WHEN clause keeps the function off the hot path: acks and completions never call it.
CREATE TRIGGER agent_commands_record_attempt AFTER UPDATE OF status ON agent_commands
    FOR EACH ROW WHEN (OLD.status IN ('sent', 'acknowledged') AND NEW.status IN ('pending', 'failed', 'cancelled'))
    EXECUTE FUNCTION streamspace_record_attempt();

-- Operators list commands newest first, filtered (GET /api/v1/commands).
CREATE INDEX agent_commands_created ON agent_commands (created_at DESC, id DESC);
