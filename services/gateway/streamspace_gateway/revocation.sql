-- The round over this replica's open streams (revocation.py): what their credentials depend on.

-- name: users_in_force
-- Of these users, the enabled ones, with what a login token is checked against.
SELECT id::text, role, password_hash FROM users WHERE id = ANY($1::uuid[]) AND disabled_at IS NULL;

-- name: live_api_keys
-- Of these API keys, those not revoked.
SELECT id::text FROM api_keys WHERE id = ANY($1::uuid[]) AND revoked_at IS NULL;

-- name: logged_out_tokens
-- Of these login tokens (SHA-256 of each), those logged out.
SELECT token_hash FROM revoked_login_tokens WHERE token_hash = ANY($1::text[]);
