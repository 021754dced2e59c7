-- Resolving the caller of a REST request (auth.py).

-- name: signing_secret
-- The shared token-signing key: the first gateway to start inserts its candidate, every replica reads the winner.
WITH inserted AS (
    INSERT INTO auth_secrets (name, secret) VALUES ('token_signing', $1)
    ON CONFLICT (name) DO NOTHING
    RETURNING secret
)
SELECT secret FROM inserted
UNION ALL
SELECT secret FROM auth_secrets WHERE name = 'token_signing'
LIMIT 1;

-- name: read_signing_secret
SELECT secret FROM auth_secrets WHERE name = 'token_signing';

-- name: user_for_token
-- The user a login token names, if still enabled (with the password hash its fingerprint is checked against),
-- and whether the token ($2: its SHA-256) was logged out.
SELECT id::text AS user_id, username, role, password_hash,
       EXISTS (SELECT 1 FROM revoked_login_tokens WHERE token_hash = $2) AS revoked
FROM users WHERE id = $1 AND disabled_at IS NULL;

-- name: revoke_login_token
-- Logout: the token ($1: its SHA-256) is refused from now on, until $3 (its expiry, unix seconds); rows
-- of tokens that have expired anyway go at the same time.
WITH expired AS (DELETE FROM revoked_login_tokens WHERE expires_at < now())
INSERT INTO revoked_login_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, to_timestamp($3))
ON CONFLICT (token_hash) DO NOTHING;

-- name: user_for_api_key
-- The owner of a live API key; last_used_at moves at most once a minute (not a write per request).
WITH hit AS (
    SELECT k.id, k.id::text AS key_id, u.id::text AS user_id, u.username, u.role, k.last_used_at
    FROM api_keys k JOIN users u ON u.id = k.user_id
    WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.disabled_at IS NULL
), touched AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE id = (SELECT id FROM hit)
      AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT user_id, username, role, key_id FROM hit;
