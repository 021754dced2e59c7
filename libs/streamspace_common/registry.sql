-- What operators register, and the audit row each change writes: the statements both the REST API
-- (services/gateway: api/agents.py, api/users.py, api/templates.py, audit.py) and the operator tools
-- (tools/streamspace_tools/admin.py) run. One copy of each: both load this file.

-- name: get_agent
SELECT agent_id, status, gateway_pod, platform, version, capabilities, concurrency, instance_id,
       last_heartbeat, connected_at, deleted_at
FROM agents WHERE agent_id = $1;

-- name: ensure_agent
-- The agent's row, made if new; its deleted_at (a deleted agent gets no new token).
WITH made AS (
    INSERT INTO agents (agent_id) VALUES ($1) ON CONFLICT (agent_id) DO NOTHING RETURNING deleted_at
)
SELECT deleted_at FROM made
UNION ALL
SELECT deleted_at FROM agents WHERE agent_id = $1;

-- name: register_agent_token
-- $3: seconds until it expires (NULL: never). Idempotent for the same token (an operator-chosen value
-- registered again): returns the token's row and whether this call registered it; its agent_id is the
-- owner's, so a token can never be moved to another agent.
WITH inserted AS (
    INSERT INTO agent_tokens (agent_id, token_hash, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
    ON CONFLICT (token_hash) DO NOTHING
    RETURNING id, agent_id, created_at, expires_at
)
SELECT id::text, agent_id, created_at, expires_at, true AS registered FROM inserted
UNION ALL
SELECT id::text, agent_id, created_at, expires_at, false FROM agent_tokens WHERE token_hash = $2
LIMIT 1;

-- name: supersede_agent_tokens
-- Rotation: the agent's live tokens but the new one ($3) keep working for $2 more seconds (the
-- overlap), or until their own earlier expiry, and are marked superseded: the gateway warns whenever
-- one is used.
UPDATE agent_tokens
SET superseded_at = coalesce(superseded_at, now()),
    expires_at = least(expires_at, now() + make_interval(secs => $2))
WHERE agent_id = $1 AND token_hash <> $3 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
RETURNING id::text, agent_id, created_at, revoked_at, expires_at, superseded_at;

-- name: create_user
-- No row: the username is taken.
INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)
ON CONFLICT (username) DO NOTHING
RETURNING id::text, username, role, created_at, disabled_at;

-- name: create_template
-- No row: the name is taken (streamspace-admin templates install-samples keeps an operator's edits so).
INSERT INTO templates (name, description, image, command, ports, cpu, memory, env, platforms, idle_timeout_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (name) DO NOTHING
RETURNING id::text, name, description, image, command, ports, cpu, memory, env, platforms, idle_timeout_seconds,
          created_at, updated_at;

-- name: record_audit
-- The audit trail (migration 0011): the one statement that writes it, but api/commands.sql
-- create_command (the hot path writes its row itself). $2 NULL: the username is looked up (a stream knows
-- its user's id only); streamspace-admin gives no user id, key or address, its actor name only.
INSERT INTO audit_log (actor_id, actor_name, key_id, address, forwarded_for, action, target, detail)
VALUES ($1::uuid, coalesce($2, (SELECT username FROM users WHERE id = $1::uuid)), $3::uuid, $4, $5, $6, $7, $8);
