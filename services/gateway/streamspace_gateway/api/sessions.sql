-- Sessions through the REST API (api/sessions.py). Every move of a session's state lives with the
-- session lifecycle (libs/streamspace_common/sessions.sql and migration 0008); these only read.

-- name: template_for_session
SELECT name, image, command, ports, cpu, memory, env, platforms, idle_timeout_seconds
FROM templates WHERE name = $1;

-- name: get_session
-- A deleted session (deleted_at set) is gone for the API at once, even while its workload is removed.
SELECT * FROM sessions WHERE id = $1::uuid AND deleted_at IS NULL;

-- name: list_sessions
-- Newest first; $1: the owner (NULL: everyone, for admins), $2: states (NULL: any), $3/$4: the cursor,
-- the (created_at, id) of the last row seen.
SELECT * FROM sessions
WHERE deleted_at IS NULL
  AND ($1::uuid IS NULL OR user_id = $1)
  AND ($2::text[] IS NULL OR state = ANY($2::text[]))
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5;
