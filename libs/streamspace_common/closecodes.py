"""WebSocket close codes the gateway uses with agents; the agent reacts to them (§3, §4)."""

SERVICE_RESTART = 1012  # gateway shutting down: reconnect to another replica at once
BAD_FRAME = 4400  # not JSON, unknown type, or wrong fields
TOKEN_REVOKED = 4401  # the agent token this socket authenticated with was revoked
FORBIDDEN = 4403  # hello names an agent the token does not belong to
HELLO_TIMEOUT = 4408  # no hello within the handshake deadline
REPLACED = 4409  # a newer socket registered with the same agent id on this replica
STALE = 4410  # no frame for 3 heartbeat intervals
OVERLOADED = 4429  # more acks and results waiting to be written than the gateway keeps per socket
