-- HA agents: the lease that makes one instance active, and the instances connected (leases.py).

-- name: acquire_lease
-- An HA agent's lease for instance $2 on this replica ($3), if nobody holds it or it lapsed; or, for
-- the instance that holds it already (a reconnect keeps its epoch), if the socket proves it is that
-- process ($5: the hash of the lease secret it presented equals holder_hash), or the lease is on THIS
-- replica (the registry has checked that no live socket of the instance is open here), or on none (its
-- gateway stopped and vacated it: vacate_pod_leases). An instance id alone, which any client may send,
-- never takes a lease another replica still renews: no row. $6: the hash of the new secret the holder is
-- given (NULL: it announced no "fence" feature). The epoch rises on every change of holder. $4: seconds
-- until it lapses unless renewed. taken_at: the registration's place in order (agent_online), read while
-- the lease row is locked, so a later holder's is always later.
INSERT INTO agent_leases AS l (agent_id, instance_id, gateway_pod, epoch, expires_at, holder_hash)
VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4), $6)
ON CONFLICT (agent_id) DO UPDATE
SET instance_id = EXCLUDED.instance_id, gateway_pod = EXCLUDED.gateway_pod, expires_at = EXCLUDED.expires_at,
    holder_hash = EXCLUDED.holder_hash,
    epoch = CASE WHEN l.instance_id = EXCLUDED.instance_id THEN l.epoch ELSE l.epoch + 1 END
WHERE l.expires_at < now()
   OR (l.instance_id = EXCLUDED.instance_id
       AND (l.gateway_pod IN (EXCLUDED.gateway_pod, '') OR l.holder_hash = $5))
RETURNING epoch, clock_timestamp() AS taken_at;

-- name: vacate_pod_leases
-- A stopping replica ($1) closes its sockets with 1012 and keeps their leases (the active replicas
-- reconnect elsewhere at once and keep their epoch and work): it names no gateway any more, so only the
-- same instance can take it back (acquire_lease), and it lapses as usual if that one does not come.
UPDATE agent_leases SET gateway_pod = '' WHERE gateway_pod = $1 AND expires_at > now();

-- name: leased_agents
-- Of these agent ids, those that have (or ever had) an HA lease: a hello without the ha feature is
-- refused for them (4426), so it can never replace an active instance.
SELECT agent_id FROM agent_leases WHERE agent_id = ANY($1::text[]);

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

-- name: vacate_lease
-- An agent this replica ($2) asked to move (4412) keeps its lease, as on 1012 (vacate_pod_leases): the same
-- instance takes it back, epoch and work in flight unchanged, through the replica it moves to.
UPDATE agent_leases SET gateway_pod = '' WHERE agent_id = $1 AND gateway_pod = $2 AND expires_at > now();
