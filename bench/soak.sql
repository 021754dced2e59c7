-- Queries of the retention soak (bench/soak.py), in the soak's own database only.

-- name: install_soak_clock
-- The retention settings count in days (commands, audit) and hours (inventories), at least 1; a soak of
-- an hour would never see a row expire. So in ITS database only, the soak ages rows as they finish:
-- when a command reaches a final status (and whenever a finished one is changed again) its created_at
-- and updated_at move back by the offset of soak_clock, and an audit row is stamped that far in the
-- past when it is written. With COMMAND_RETENTION_DAYS=1 and an offset of 1 day minus R, a command
-- becomes prunable R after it finished, exactly as it would after 1 day: the dispatcher's pruning,
-- its queries, batches and settings are the product's, only the clock of finished rows is shifted.
-- Open commands keep their real times (claim order, deadlines and sweeps are untouched). Named zz_ so
-- it fires after the product's BEFORE triggers (agent_commands_touch, the audit guard's NEW.at).
CREATE TABLE soak_clock (
    command_offset   interval NOT NULL,  -- 1 day (COMMAND_RETENTION_DAYS=1) minus the soak's retention
    inventory_offset interval NOT NULL,  -- 1 hour (INVENTORY_RETENTION_HOURS=1) minus it
    audit_offset     interval NOT NULL   -- 1 day (AUDIT_RETENTION_DAYS=1) minus it
);
CREATE FUNCTION soak_age_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    clock soak_clock;
    shift interval;
BEGIN
    SELECT * INTO clock FROM soak_clock;
    IF NEW.status IN ('pending', 'sent', 'acknowledged') THEN
        RETURN NEW;
    END IF;
    shift := CASE WHEN NEW.action = 'INVENTORY_SESSIONS' THEN clock.inventory_offset ELSE clock.command_offset END;
    IF TG_OP = 'INSERT' OR OLD.status IN ('pending', 'sent', 'acknowledged') THEN
        NEW.created_at := NEW.created_at - shift;
    END IF;
    NEW.updated_at := NEW.updated_at - shift;
    RETURN NEW;
END $$;
CREATE TRIGGER zz_soak_age_finished BEFORE INSERT OR UPDATE ON agent_commands
    FOR EACH ROW EXECUTE FUNCTION soak_age_finished();
CREATE FUNCTION soak_age_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.at := NEW.at - (SELECT audit_offset FROM soak_clock);
    RETURN NEW;
END $$;
CREATE TRIGGER zz_soak_age_audit BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION soak_age_audit();

-- name: set_soak_clock
-- $1: the soak's retention in seconds (the same for the three tables).
INSERT INTO soak_clock (command_offset, inventory_offset, audit_offset)
VALUES (interval '1 day' - make_interval(secs => $1), interval '1 hour' - make_interval(secs => $1),
        interval '1 day' - make_interval(secs => $1));

-- name: row_counts
-- Rows of each table the retention prunes (counted exactly: the tables stay small when it works), and
-- the commands still open (the system keeps up with the load when this stays low).
SELECT (SELECT count(*) FROM agent_commands WHERE action <> 'INVENTORY_SESSIONS') AS agent_commands,
       (SELECT count(*) FROM agent_commands WHERE action = 'INVENTORY_SESSIONS') AS inventories,
       (SELECT count(*) FROM agent_command_attempts) AS agent_command_attempts,
       (SELECT count(*) FROM audit_log) AS audit_log,
       (SELECT count(*) FROM agent_commands WHERE status IN ('pending', 'sent', 'acknowledged')) AS open_commands,
       (SELECT count(*) FROM agent_commands WHERE status = 'completed') AS completed_stored;

-- name: table_stats
-- Size on disk (heap, indexes, TOAST) and the statistics collector's live/dead tuples and vacuums.
SELECT relname AS table, pg_total_relation_size(relid) AS bytes, n_live_tup AS live, n_dead_tup AS dead,
       autovacuum_count AS autovacuums, autoanalyze_count AS autoanalyzes
FROM pg_stat_user_tables
WHERE relname IN ('agent_commands', 'agent_command_attempts', 'audit_log')
ORDER BY relname;
