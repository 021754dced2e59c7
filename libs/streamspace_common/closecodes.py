"""WebSocket close codes the gateway uses with agents; the agent reacts to them (§3, §4)."""

SERVICE_RESTART = 1012  # gateway shutting down: reconnect to another replica at once
BAD_FRAME = 4400  # not JSON, unknown type, or wrong fields
TOKEN_REVOKED = 4401  # the agent token this socket authenticated with was revoked, or has expired
FORBIDDEN = 4403  # hello names an agent the token does not belong to
AGENT_DELETED = 4404  # the agent id was deleted (drained, DELETE /api/v1/agents/{id}): retired for good
HELLO_TIMEOUT = 4408  # no hello within the handshake deadline
REPLACED = 4409  # a newer socket registered with the same agent id (here, or its row write came first)
STALE = 4410  # no frame for 3 heartbeat intervals
INSTANCE_CONNECTED = 4411  # HA: this instance id already has a live socket on this replica (the newcomer is refused)
HA_REQUIRED = 4426  # a hello without the "ha" feature for an agent id that runs with HA leases
# Rebalancing (docs/operations.md "Scaling the gateways"): this replica holds more than its fair share of the
# agents; reconnect at once (after the jittered delay the gateway already waited) to ANOTHER of GATEWAY_URLS,
# announcing MOVING_HEADER. The lease is kept (vacated, as on 1012), so in-flight work stays with this process.
MOVE = 4412
OVERLOADED = 4429  # more acks and results waiting to be written than the gateway keeps per socket

# Streams (docs/streams.md): the browser's WebSocket and the agent's data WebSocket close with these,
# and a close at one end is passed to the other with its code and reason.
STREAM_ENDED = 4000  # the session closed its end (it stopped, was deleted or killed)
STREAM_IDLE = 4001  # no byte either way for STREAM_IDLE_TIMEOUT
STREAM_ERROR = 4002  # the agent could not connect or pipe; the reason says why
STREAM_REFUSED = 4003  # no tunnel: the agent refused (a limit) or did not dial back in time
STREAM_REVOKED = 4004  # the credential that opened it ended: user disabled, password changed, logout, key revoked
