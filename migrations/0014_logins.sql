-- Logins and revocation (docs/security.md "Logins and revocation"): a login token ended by
-- POST /api/v1/auth/logout before its expiry. Login tokens are signed and need no table to be checked;
-- this one holds only the logged-out ones until they would have expired anyway (the gateway deletes
-- the expired rows as it adds new ones). token_hash is the SHA-256 of the whole token.
CREATE TABLE revoked_login_tokens (
    token_hash  text         PRIMARY KEY,
    user_id     uuid         NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  timestamptz  NOT NULL,
    revoked_at  timestamptz  NOT NULL DEFAULT now()
);

CREATE INDEX revoked_login_tokens_expiry ON revoked_login_tokens (expires_at);

-- Whatever ends a credential wakes every gateway's round over its open streams (channel
-- streamspace_access_revoked, keys.ACCESS_CHANNEL; payload: the user id), whichever path made the change
-- (REST API or streamspace-admin). The round re-reads the rows itself: the NOTIFY is only a wake-up.
CREATE FUNCTION streamspace_access_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        PERFORM pg_notify('streamspace_access_revoked', OLD.id::text);
    ELSE
        PERFORM pg_notify('streamspace_access_revoked', NEW.user_id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER users_access_revoked AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.password_hash IS DISTINCT FROM NEW.password_hash OR OLD.role IS DISTINCT FROM NEW.role
          OR (OLD.disabled_at IS NULL AND NEW.disabled_at IS NOT NULL))
    EXECUTE FUNCTION streamspace_access_revoked();
CREATE TRIGGER users_deleted AFTER DELETE ON users FOR EACH ROW EXECUTE FUNCTION streamspace_access_revoked();
CREATE TRIGGER api_keys_revoked AFTER UPDATE ON api_keys FOR EACH ROW
    WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION streamspace_access_revoked();
CREATE TRIGGER login_tokens_revoked AFTER INSERT ON revoked_login_tokens FOR EACH ROW
    EXECUTE FUNCTION streamspace_access_revoked();
