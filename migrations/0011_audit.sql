-- The audit trail (docs/security.md "Audit trail"): who did what, from where, one row per event that a
-- person or an API key caused through the REST API (logins, accounts, keys, templates, agent tokens,
-- sessions, commands, streams). Agent-internal traffic (acks, results, inventories) is not recorded.
--
-- Append-only, enforced here rather than trusted to the code: a row's time is the inserting
-- transaction's (a row cannot be back-dated), UPDATE and TRUNCATE are refused, and DELETE is refused
-- unless the deleting transaction declares the retention (set_config('streamspace.audit_retention', ...,
-- true), which only the dispatcher's pruning does) and then only for rows older than it, and never for
-- a retention under a day. A superuser or the table's owner can still drop the trigger: run the services
-- as a role that owns nothing (docs/security.md).

CREATE TABLE audit_log (
    id             uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    at             timestamptz  NOT NULL DEFAULT now(),
    actor_id       uuid,         -- the user (not a reference: the row outlives the account)
    actor_name     text,         -- their username then; at a failed login, the name tried
    key_id         uuid,         -- the API key the request came with (NULL: a login token)
    address        text,         -- the client address the gateway saw (the peer of its socket)
    forwarded_for  text,         -- X-Forwarded-For as sent: set by an ingress, or forged by the client
    action         text         NOT NULL,  -- e.g. session.create (docs/security.md lists them)
    target         text,         -- what it was done to: a user, key, template, session, command id...
    detail         jsonb        NOT NULL DEFAULT '{}',
    replica        text         NOT NULL DEFAULT current_setting('application_name')  -- the recording process
);

-- GET /api/v1/audit pages newest first by (at, id); the filters most asked for have their own.
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor_id, at DESC, id DESC);
CREATE INDEX audit_log_target ON audit_log (target, at DESC, id DESC);

CREATE FUNCTION streamspace_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    retention interval;
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.at := now();
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        retention := nullif(current_setting('streamspace.audit_retention', true), '')::interval;
        IF retention >= interval '1 day' AND OLD.at < now() - retention THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit_log is append-only: row % (of %) is within the retention (%)',
            OLD.id, OLD.at, coalesce(retention::text, 'not declared')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE INSERT OR UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION streamspace_audit_guard();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION streamspace_audit_guard();
