-- Agent HA (§3, issue 13 step 4): several replicas (instances) of one agent id may be connected; the one
-- holding the agent's lease is active and receives commands, the others stand by. The lease's epoch rises
-- every time it changes hands and never goes back (a released lease lapses, it is not deleted), so acks
-- and results written under an older epoch can be refused.
CREATE TABLE agent_leases (
    agent_id    varchar(255) PRIMARY KEY REFERENCES agents (agent_id) ON DELETE CASCADE,
    instance_id varchar(255) NOT NULL,
    gateway_pod varchar(255) NOT NULL,
    epoch       bigint       NOT NULL,
    expires_at  timestamptz  NOT NULL
);

-- Every connected instance of an HA agent, on whichever gateway replica (what GET /agents/{id} shows).
CREATE TABLE agent_instances (
    agent_id     varchar(255) NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    instance_id  varchar(255) NOT NULL,
    gateway_pod  varchar(255) NOT NULL,
    connected_at timestamptz  NOT NULL DEFAULT now(),
    seen_at      timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, instance_id)
);

-- The lease epoch a command was claimed under (NULL: an agent without HA).
ALTER TABLE agent_commands ADD COLUMN epoch bigint;
