-- Creating commits NOTIFY only while no dispatcher is claiming round after round (issue 15; the
-- protocol and why it loses no wake-up: docs/control-plane.md "Wake-ups under load").
--
-- A NOTIFYing transaction holds PostgreSQL's one NOTIFY lock through its commit, WAL flush included,
-- so NOTIFYing commits go one at a time: with a NOTIFY per create, creating was the bound on
-- throughput (20 clients: ~6,000 commits/s with a NOTIFY, ~21,000 without, on the 2-core machine).
-- While a dispatcher is in a streak (its last round claimed work and it goes straight into the
-- next), a wake-up adds nothing: it will look again anyway.

-- One row per dispatcher in a streak; `until` bounds a streak whose dispatcher died without ending it.
-- Unlogged: no WAL, and emptied by a crash of the server, which ends every streak anyway.
CREATE UNLOGGED TABLE dispatcher_streaks (
    dispatcher  text         PRIMARY KEY,
    until       timestamptz  NOT NULL
);

-- Wake the dispatchers about an agent (channel streamspace_dispatch, payload = agent id), unless one
-- is in a streak. Every caller holds the shared lock 'streamspace_dispatch_creators' until it commits:
-- a dispatcher ending its streak first removes its row, then waits (by trying the lock exclusively)
-- until no transaction that may have seen the row is still open, and only then claims a last time.
-- Under REPEATABLE READ or SERIALIZABLE the row read here may be older than the lock, so such
-- transactions always NOTIFY.
CREATE FUNCTION streamspace_wake_dispatchers(agent text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('streamspace_dispatch_creators'));
    IF current_setting('transaction_isolation') <> 'read committed'
       OR NOT EXISTS (SELECT 1 FROM dispatcher_streaks WHERE until > clock_timestamp()) THEN
        PERFORM pg_notify('streamspace_dispatch', agent);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION streamspace_notify_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' AND (TG_OP = 'INSERT' OR OLD.status <> 'pending')
       OR (TG_OP = 'UPDATE' AND OLD.status IN ('sent', 'acknowledged') AND NEW.status <> OLD.status
           AND (NEW.session_id IS NOT NULL
                OR EXISTS (SELECT 1 FROM agents WHERE agent_id = NEW.agent_id AND concurrency > 0))) THEN
        PERFORM streamspace_wake_dispatchers(NEW.agent_id);
    END IF;
    RETURN NULL;
END $$;
