-- Which agents are online on which replica (presence.py): the agents rows a registration, a
-- heartbeat and a leaving write, and the count the rebalancer reads.

-- name: registration_clock
-- A socket's place in the order of its agent's registrations (a non-HA socket's, taken when it starts
-- registering; an HA one's is the time it took the lease: acquire_lease).
SELECT clock_timestamp();

-- name: agent_online
-- $8: the registration's place in order (registration_clock, acquire_lease), written as connected_at,
-- which identifies the socket (agent_offline). A registration older than the one the row names already
-- (its write came late, after a newer socket's on another replica or this one) writes nothing: no row.
UPDATE agents
SET status = 'online', gateway_pod = $2, platform = $3, version = $4, capabilities = $5,
    concurrency = $6, instance_id = $7, connected_at = $8, last_heartbeat = now()
WHERE agent_id = $1 AND (connected_at IS NULL OR connected_at <= $8)
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

-- name: presence
-- Rebalancing (rebalance.py): the live gateway replicas of this database (their LISTEN connections, whose
-- application_name is their pod channel, bus.py: a replica that started counts before it holds an agent)
-- and the agents online on any of them, or seen within $2 seconds (3 heartbeat intervals): an agent moving
-- (4412, 1012) is offline for a moment and still counts, or the fair share would fall with every move and
-- push more replicas above it (measured: at 5,000 agents the moves fed themselves). $1: the channel prefix
-- (keys.POD_CHANNEL_PREFIX).
SELECT (SELECT count(DISTINCT application_name) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name LIKE $1 || '%') AS replicas,
       (SELECT count(*) FROM agents
        WHERE deleted_at IS NULL
          AND (status = 'online' OR last_heartbeat > now() - make_interval(secs => $2))) AS agents;
