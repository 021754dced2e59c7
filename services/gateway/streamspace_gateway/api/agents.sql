-- Agents and their tokens through the REST API (api/agents.py). Presence (online/offline, heartbeats)
-- is written by the agent socket, not here.

-- name: list_agents
SELECT agent_id, status, gateway_pod, platform, version, capabilities, concurrency, instance_id,
       last_heartbeat, connected_at
FROM agents ORDER BY agent_id;

-- name: get_agent
SELECT agent_id, status, gateway_pod, platform, version, capabilities, concurrency, instance_id,
       last_heartbeat, connected_at
FROM agents WHERE agent_id = $1;

-- name: ensure_agent
INSERT INTO agents (agent_id) VALUES ($1) ON CONFLICT (agent_id) DO NOTHING;

-- name: create_agent_token
INSERT INTO agent_tokens (agent_id, token_hash) VALUES ($1, $2)
RETURNING id::text, agent_id, created_at;

-- name: list_agent_tokens
SELECT id::text, agent_id, created_at, revoked_at FROM agent_tokens WHERE agent_id = $1 ORDER BY created_at, id;

-- name: revoke_agent_token
-- Idempotent: revoking twice keeps the first time. No row: no such token for this agent.
UPDATE agent_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1 AND agent_id = $2
RETURNING id;
