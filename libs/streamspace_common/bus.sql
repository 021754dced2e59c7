-- The PostgreSQL path of the delivery bus (bus.py): used while Redis is unreachable.

-- name: online_agent_pods
-- The replica each online agent's socket registered on.
SELECT agent_id, gateway_pod FROM agents
WHERE agent_id = ANY($1::text[]) AND status = 'online' AND gateway_pod IS NOT NULL;

-- name: listening_pods
-- Gateway connections LISTENing for handed-over commands: their application_name is their channel.
SELECT DISTINCT application_name FROM pg_stat_activity WHERE application_name LIKE $1 || '%';

-- name: hand_over
-- One NOTIFY per (channel, payload) pair.
SELECT pg_notify(channel, payload) FROM unnest($1::text[], $2::text[]) AS t(channel, payload);

-- name: handed_over
-- The commands a dispatcher handed this replica, still sent at the attempt it claimed (a row since
-- acknowledged, requeued or claimed again is left alone).
SELECT c.command_id, c.agent_id, c.session_id, c.action, c.payload, c.attempts, c.epoch
FROM agent_commands c JOIN unnest($1::text[], $2::int[]) AS h(command_id, attempt)
  ON c.command_id = h.command_id AND c.attempts = h.attempt
WHERE c.status = 'sent';
