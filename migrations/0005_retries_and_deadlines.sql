-- Retries through RabbitMQ and completion deadlines (§2 step 6, issue 13).

-- The one backoff policy of every retry (an expired ack, a retryable failure, a missed completion
-- deadline): 1 s, 2 s, 4 s ... after attempt 1, 2, 3 ..., capped at 30 s, with 50-100 % jitter so a
-- burst of failures does not come back as one burst.
CREATE FUNCTION streamspace_retry_delay(attempts integer) RETURNS interval LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(power(2, greatest(attempts, 1) - 1), 30) * (0.5 + random() / 2))
$$;

ALTER TABLE agent_commands
    -- Seconds the agent may take from acknowledging to reporting; NULL: the dispatchers' COMMAND_TIMEOUT.
    ADD COLUMN timeout_seconds integer CHECK (timeout_seconds > 0),
    -- When a dispatcher put this wait (pending, next_attempt_at in the future) on a RabbitMQ wait queue;
    -- NULL: not scheduled (yet, or RabbitMQ was down): the sweep still honours next_attempt_at.
    ADD COLUMN retry_scheduled_at timestamptz;

-- Waits no dispatcher has scheduled on RabbitMQ yet.
CREATE INDEX agent_commands_unscheduled_retries ON agent_commands (next_attempt_at)
    WHERE status = 'pending' AND next_attempt_at IS NOT NULL AND retry_scheduled_at IS NULL;
