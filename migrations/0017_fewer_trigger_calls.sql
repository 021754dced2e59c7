-- Less work per command in PostgreSQL (issue 27: the bulk path is bound by PostgreSQL's work per
-- command, bench/README.md "Issue 27: two full runs on the idle machine").
--
-- The wake-up row trigger (streamspace_notify_command, migration 0009) ran its PL/pgSQL for every
-- status change, the claim's pending -> sent included, where it never NOTIFYs. Its WHEN now holds the
-- function's own outer conditions (a row put back to pending; a row leaving sent or acknowledged), so
-- the function runs, and an after-trigger event is queued, only where it may NOTIFY; what it decides
-- inside is unchanged. Measured on a scratch database (20,000 commands, claims of 100 a statement,
-- three interleaved rounds): the claim's statement 41-47 -> 31-34 us per command.

DROP TRIGGER agent_commands_notify ON agent_commands;
CREATE TRIGGER agent_commands_notify AFTER UPDATE OF status ON agent_commands
    FOR EACH ROW
    WHEN (NEW.status = 'pending' AND OLD.status <> 'pending'
          OR OLD.status IN ('sent', 'acknowledged') AND NEW.status <> OLD.status)
    EXECUTE FUNCTION streamspace_notify_command();
