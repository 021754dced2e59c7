-- API keys through the REST API (api/keys.py). Resolving a key to its user is in auth.sql.

-- name: create_key
INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)
RETURNING id::text, name, prefix, created_at;

-- name: list_keys
-- $1 NULL: every user's keys (administrators only).
SELECT id::text, user_id::text, name, prefix, created_at, last_used_at, revoked_at
FROM api_keys WHERE $1::uuid IS NULL OR user_id = $1
ORDER BY created_at, id;

-- name: key_owner
SELECT user_id::text FROM api_keys WHERE id = $1;

-- name: revoke_key
-- Idempotent: revoking twice keeps the first time.
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1;
