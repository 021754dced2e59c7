-- Users through the REST API (api/users.py) and login (api/auth.py).
-- The statements streamspace-admin runs as well are in streamspace_common/registry.sql.

-- name: user_for_login
SELECT id::text, role, password_hash FROM users WHERE username = $1 AND disabled_at IS NULL;

-- name: list_users
SELECT id::text, username, role, created_at, disabled_at FROM users ORDER BY username;

-- name: get_user
SELECT id::text, username, role, created_at, disabled_at FROM users WHERE id = $1;

-- name: update_user
-- NULL leaves a column as it is; $4 true disables (keeping the first time), false enables.
UPDATE users
SET password_hash = coalesce($2, password_hash),
    role = coalesce($3, role),
    disabled_at = CASE WHEN $4::boolean IS NULL THEN disabled_at
                       WHEN $4 THEN coalesce(disabled_at, now())
                       ELSE NULL END
WHERE id = $1
RETURNING id::text, username, role, created_at, disabled_at;

-- name: delete_user
-- Their API keys go with them (ON DELETE CASCADE). No row: no such user.
DELETE FROM users WHERE id = $1 RETURNING username;

-- name: own_password_hash
-- The caller's password hash, if their account is enabled (NULL: verify against the dummy hash).
SELECT password_hash FROM users WHERE id = $1 AND disabled_at IS NULL;

-- name: set_own_password
-- Only over the hash just verified ($2): a concurrent change wins, this one finds no row.
UPDATE users SET password_hash = $3
WHERE id = $1 AND password_hash = $2 AND disabled_at IS NULL
RETURNING id::text, role, password_hash;
