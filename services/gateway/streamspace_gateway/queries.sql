-- Queries run by the gateway.

-- name: agent_for_token
SELECT agent_id FROM agent_tokens WHERE token_hash = $1 AND revoked_at IS NULL;

-- name: agent_online
UPDATE agents
SET status = 'online', gateway_pod = $2, platform = $3, version = $4, capabilities = $5,
    concurrency = $6, instance_id = $7, connected_at = now(), last_heartbeat = now()
WHERE agent_id = $1;

-- name: agent_offline
-- Guarded by pod: if the agent has already registered on another replica, leave it online there.
UPDATE agents SET status = 'offline'
WHERE agent_id = $1 AND gateway_pod = $2 AND status = 'online';

-- name: pod_agents_offline
-- At start-up and shutdown: this replica holds no sockets, whatever the table says.
UPDATE agents SET status = 'offline' WHERE gateway_pod = $1 AND status = 'online';

-- name: touch_heartbeats
UPDATE agents SET last_heartbeat = now()
WHERE agent_id = ANY($1::text[]) AND gateway_pod = $2;

-- name: wake_dispatchers
-- The same NOTIFY an agent coming online sends (migrations: streamspace_notify_agent).
SELECT pg_notify($2, agent_id) FROM unnest($1::text[]) AS agent_id;
