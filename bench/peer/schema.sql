-- The peer's own table, next to procrastinate's schema (applied by `peer.py schema`).
-- A command row is created together with its procrastinate job; the agent's ack completes it, and
-- the completion fires a NOTIFY that the benchmark's LISTENing connection times.

CREATE TABLE peer_commands (
    command_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id text NOT NULL,
    action text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'pending',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at timestamptz
);

CREATE FUNCTION peer_notify_completed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('peer_completed', NEW.command_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER peer_notify_completed AFTER UPDATE OF status ON peer_commands
    FOR EACH ROW WHEN (NEW.status = 'completed' AND OLD.status <> 'completed')
    EXECUTE FUNCTION peer_notify_completed();
