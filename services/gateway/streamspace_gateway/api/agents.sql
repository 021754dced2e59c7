-- Agents and their tokens through the REST API (api/agents.py). Presence (online/offline, heartbeats)
-- is written by the agent socket, not here.
-- The statements streamspace-admin runs as well are in streamspace_common/registry.sql.

-- name: list_agents
-- Deleted (drained) agents too, with their deleted_at: the rows stay for history.
SELECT agent_id, status, gateway_pod, platform, version, capabilities, concurrency, instance_id,
       last_heartbeat, connected_at, deleted_at
FROM agents ORDER BY agent_id;

-- name: mark_agent_deleted
-- Draining: the row stays (commands and sessions refer to it) with its deleted_at, the first one kept
-- when asked again. No row: no such agent.
UPDATE agents SET deleted_at = coalesce(deleted_at, now()) WHERE agent_id = $1
RETURNING deleted_at;

-- name: revoke_agent_tokens
-- Draining: every token of the agent not yet revoked; the gateways close their sockets (4401) within
-- a heartbeat interval.
UPDATE agent_tokens SET revoked_at = now()
WHERE agent_id = $1 AND revoked_at IS NULL
RETURNING id::text;

-- name: list_agent_tokens
SELECT id::text, agent_id, created_at, revoked_at, expires_at, superseded_at FROM agent_tokens
WHERE agent_id = $1 ORDER BY created_at, id;

-- name: revoke_agent_token
-- Idempotent: revoking twice keeps the first time. No row: no such token for this agent.
UPDATE agent_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1 AND agent_id = $2
RETURNING id;

-- name: lease_epoch
SELECT epoch FROM agent_leases WHERE agent_id = $1;

-- name: agent_instances
-- Connected replicas of an HA agent seen within $2 seconds; active: the one holding an unlapsed lease.
SELECT i.instance_id, i.gateway_pod, i.connected_at,
       CASE WHEN l.instance_id = i.instance_id AND l.expires_at > now() THEN 'active' ELSE 'standby' END AS role
FROM agent_instances i LEFT JOIN agent_leases l USING (agent_id)
WHERE i.agent_id = $1 AND i.seen_at > now() - make_interval(secs => $2)
ORDER BY i.connected_at;
