-- Fencing and agent tokens that end (docs/security.md, "Agents and fencing").
--
-- The server names the lease holder: when a socket takes an HA agent's lease, its gateway gives the agent
-- process a random secret in the role frame and keeps its hash here. Only a socket presenting that secret
-- (or one on the lease's own gateway, after its socket closed) may take the lease back for the same
-- instance while it is held; an instance id alone, which any client may send, never does.
ALTER TABLE agent_leases ADD COLUMN holder_hash char(64);  -- NULL: the holder announced no "fence" feature

-- An optional expiry on every agent token, and rotation with an overlap window: `streamspace-admin
-- agent-token rotate` (or POST .../tokens/rotate) registers a new token and gives the agent's other live
-- tokens an expiry at the end of the overlap, marking them superseded. The gateway logs a warning whenever
-- one of those is used, and refuses it (401 at the handshake, 4401 for its open sockets) once expired.
ALTER TABLE agent_tokens ADD COLUMN expires_at timestamptz;     -- NULL: never expires
ALTER TABLE agent_tokens ADD COLUMN superseded_at timestamptz;  -- set when a rotation replaced it
