-- Operator queries run by streamspace-admin.

-- name: ensure_agent
INSERT INTO agents (agent_id) VALUES ($1) ON CONFLICT (agent_id) DO NOTHING;

-- name: agent_deleted_at
-- A deleted (drained) agent's id is retired: no token is made for it.
SELECT deleted_at FROM agents WHERE agent_id = $1;

-- name: register_token
-- Idempotent for the same agent; returns the owner so a token can never be moved to another agent,
-- the token's id, and whether this call registered it. $3: when it expires (NULL: never).
WITH inserted AS (
    INSERT INTO agent_tokens (agent_id, token_hash, expires_at) VALUES ($1, $2, $3)
    ON CONFLICT (token_hash) DO NOTHING
    RETURNING agent_id, id
)
SELECT agent_id, id::text, true AS registered FROM inserted
UNION ALL
SELECT agent_id, id::text, false FROM agent_tokens WHERE token_hash = $2
LIMIT 1;

-- name: agent_exists
SELECT 1 FROM agents WHERE agent_id = $1;

-- name: supersede_tokens
-- Rotation: the agent's live tokens (but $3, the new one) keep working for $2 more seconds (the
-- overlap), or until their own earlier expiry, and are marked superseded: the gateway warns whenever
-- one is used.
UPDATE agent_tokens
SET superseded_at = coalesce(superseded_at, now()),
    expires_at = least(expires_at, now() + make_interval(secs => $2))
WHERE agent_id = $1 AND token_hash <> $3 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
RETURNING id::text, expires_at;

-- name: create_user
-- No row: the username is taken.
INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)
ON CONFLICT (username) DO NOTHING
RETURNING id::text;

-- name: install_template
-- streamspace-admin templates install-samples: a sample template, unless one of that name exists
-- (an operator's edits are kept). Returns the name when it was installed.
INSERT INTO templates (name, description, image, command, ports, cpu, memory, env, platforms, idle_timeout_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (name) DO NOTHING
RETURNING name;

-- name: audit
-- The audit trail (migration 0011): what the operator did from the command line. No client address: the
-- actor is streamspace-admin and the operating system's user that ran it.
INSERT INTO audit_log (actor_name, action, target, detail) VALUES ($1, $2, $3, $4);
