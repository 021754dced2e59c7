-- Queries run by the gateway.

-- name: agent_for_token
SELECT agent_id FROM agent_tokens WHERE token_hash = $1 AND revoked_at IS NULL;

-- name: revoked_tokens
-- Those of these token hashes that are no longer live (revoked or gone): usually none, so the
-- upkeep of 10,000 sockets reads back nothing rather than 10,000 rows.
SELECT h.token_hash FROM unnest($1::text[]) AS h(token_hash)
WHERE NOT EXISTS (SELECT 1 FROM agent_tokens t WHERE t.token_hash = h.token_hash AND t.revoked_at IS NULL);

-- name: agent_online
UPDATE agents
SET status = 'online', gateway_pod = $2, platform = $3, version = $4, capabilities = $5,
    concurrency = $6, instance_id = $7, connected_at = now(), last_heartbeat = now()
WHERE agent_id = $1
RETURNING connected_at;

-- name: agent_offline
-- Guarded by pod and by connection ($3: the connected_at its registration wrote): if the agent has
-- registered again since, on another replica or on this one, leave the newer socket's row alone.
UPDATE agents SET status = 'offline'
WHERE agent_id = $1 AND gateway_pod = $2 AND connected_at = $3 AND status = 'online';

-- name: pod_agents_offline
-- At start-up and shutdown: this replica holds no sockets, whatever the table says.
UPDATE agents SET status = 'offline' WHERE gateway_pod = $1 AND status = 'online';

-- name: touch_heartbeats
UPDATE agents SET last_heartbeat = now()
WHERE agent_id = ANY($1::text[]) AND gateway_pod = $2;

-- name: wake_dispatchers
-- The same NOTIFY an agent coming online sends (migrations: streamspace_notify_agent).
SELECT pg_notify($2, agent_id) FROM unnest($1::text[]) AS agent_id;

-- name: acquire_lease
-- An HA agent's lease for instance $2 on this replica ($3), if nobody holds it, it lapsed, or that
-- instance holds it already (a reconnect keeps its epoch); the epoch rises on every change of holder.
-- No row: another instance holds it. $4: seconds until it lapses unless renewed.
INSERT INTO agent_leases AS l (agent_id, instance_id, gateway_pod, epoch, expires_at)
VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4))
ON CONFLICT (agent_id) DO UPDATE
SET instance_id = EXCLUDED.instance_id, gateway_pod = EXCLUDED.gateway_pod, expires_at = EXCLUDED.expires_at,
    epoch = CASE WHEN l.instance_id = EXCLUDED.instance_id THEN l.epoch ELSE l.epoch + 1 END
WHERE l.expires_at < now() OR l.instance_id = EXCLUDED.instance_id
RETURNING epoch;

-- name: lapsed_leases
-- Of these agents (standbys here, none active here), those whose lease nobody holds any more: only
-- they are worth a take (acquire_lease) this upkeep round, not every standby.
SELECT w.agent_id FROM unnest($1::text[]) AS w(agent_id)
LEFT JOIN agent_leases l ON l.agent_id = w.agent_id
WHERE l.agent_id IS NULL OR l.expires_at < now();

-- name: lease_epoch
SELECT epoch FROM agent_leases WHERE agent_id = $1;

-- name: renew_leases
-- The leases this replica's active sockets hold, extended; returns the agents whose lease another
-- instance took (not extended): usually none.
WITH renewed AS (
    UPDATE agent_leases l SET expires_at = now() + make_interval(secs => $5)
    FROM unnest($1::text[], $2::text[], $3::bigint[]) AS held(agent_id, instance_id, epoch)
    WHERE l.agent_id = held.agent_id AND l.instance_id = held.instance_id AND l.epoch = held.epoch
      AND l.gateway_pod = $4
    RETURNING l.agent_id
)
SELECT agent_id FROM unnest($1::text[]) AS held(agent_id)
EXCEPT
SELECT agent_id FROM renewed;

-- name: release_lease
-- The active socket closed: its lease lapses at once (never deleted, so the epoch keeps rising) and
-- the gateways holding standbys of the agent are told. Guarded by this replica ($5) too: the same
-- instance may already hold the lease again through another gateway (it reconnected at once after a
-- 1012), and an old socket's late release must not take that newer socket's lease away.
WITH released AS (
    UPDATE agent_leases SET expires_at = '-infinity'
    WHERE agent_id = $1 AND instance_id = $2 AND epoch = $3 AND gateway_pod = $5
    RETURNING agent_id
)
SELECT pg_notify($4, agent_id) FROM released;

-- name: instance_connected
INSERT INTO agent_instances (agent_id, instance_id, gateway_pod) VALUES ($1, $2, $3)
ON CONFLICT (agent_id, instance_id) DO UPDATE
SET gateway_pod = EXCLUDED.gateway_pod, connected_at = now(), seen_at = now();

-- name: instance_gone
DELETE FROM agent_instances WHERE agent_id = $1 AND instance_id = $2 AND gateway_pod = $3;

-- name: touch_instances
UPDATE agent_instances SET seen_at = now()
FROM unnest($1::text[], $2::text[]) AS live(agent_id, instance_id)
WHERE agent_instances.agent_id = live.agent_id AND agent_instances.instance_id = live.instance_id
  AND gateway_pod = $3;

-- name: pod_instances_gone
-- At start-up and shutdown: this replica holds no sockets.
DELETE FROM agent_instances WHERE gateway_pod = $1;
