"""Every Redis key and channel name, every PostgreSQL NOTIFY channel and every RabbitMQ name, in one place (§3).

Channels are global to a Redis server (not per database), so the optional prefix isolates
test runs and co-tenant deployments for keys and channels alike.
"""

from __future__ import annotations

import hashlib

# PostgreSQL NOTIFY channel that wakes the dispatchers; the payload is an agent id. The triggers of
# migrations 0001/0002/0015 spell it as a literal too (SQL cannot import this).
DISPATCH_CHANNEL = "streamspace_dispatch"
# Its payload when one INSERT statement made commands pending for several agents (migration 0015, the
# bulk path): every agent with due commands may have some. No agent id starts with '*' (ID_PATTERN).
DISPATCH_EVERY_AGENT = "*"

# PostgreSQL advisory lock (hashtext of this name) that every transaction waking the dispatchers holds
# shared until it ends; a dispatcher ending a claiming streak tries it exclusively (docs/control-plane.md
# "Wake-ups under load"). Migration 0009 spells it as a literal too.
DISPATCH_CREATORS_LOCK = "streamspace_dispatch_creators"

# PostgreSQL NOTIFY channel on which a gateway says an HA agent's lease was released (payload: agent id);
# the gateways holding standby replicas of that agent try to take it at once.
LEASE_CHANNEL = "streamspace_lease_released"

# PostgreSQL NOTIFY channel on which a gateway says a credential ended (payload: the user id): a user
# disabled, deleted, demoted or given a new password, an API key revoked, a login token logged out. Every
# gateway wakes its round over the streams it holds and closes those the credential opened.
ACCESS_CHANNEL = "streamspace_access_revoked"

POD_CHANNEL_PREFIX = "streamspace_pod_"


def pod_notify_channel(pod: str) -> str:
    """PostgreSQL NOTIFY channel of one gateway replica: where dispatchers hand it commands while Redis
    is down. Also the application_name of the connection LISTENing on it, so a dispatcher sees in
    pg_stat_activity which replicas listen. A channel is an identifier of at most 63 bytes and a pod
    name may be longer, hence the hash (channels are per database, so test runs never share one)."""
    return POD_CHANNEL_PREFIX + hashlib.sha256(pod.encode()).hexdigest()[:32]


# RabbitMQ (retries only, §2 step 6; isolation is by vhost). A wait queue per delay step dead-letters
# into the ready queue through the retry exchange (dispatcher/retries.py has the topology).
RETRY_EXCHANGE = "streamspace.retry"
RETRY_READY_QUEUE = "streamspace.retry.ready"


def retry_wait_queue(milliseconds: int) -> str:
    """The wait queue whose messages dead-letter into the ready queue after `milliseconds`."""
    return f"streamspace.retry.wait.{milliseconds}ms"


class RedisKeys:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def agent_pod(self, agent_id: str) -> str:
        """agent -> name of the gateway replica holding its socket; expires after 3 heartbeats."""
        return f"{self.prefix}agent:{agent_id}:pod"

    def agent_connected(self, agent_id: str) -> str:
        """agent -> unix time its current socket registered."""
        return f"{self.prefix}agent:{agent_id}:connected"

    def pod_commands(self, pod: str) -> str:
        """Channel a gateway replica subscribes to for commands bound for its sockets."""
        return f"{self.prefix}pod:{pod}:commands"

    def stream_ticket_used(self, ticket_id: str) -> str:
        """A signed stream ticket's random id, set (SET NX) when the ticket is redeemed: single use across
        replicas. Expires when the ticket does. Not a credential: the ticket's signature is checked
        first, so writing one of these opens nothing (docs/streams.md)."""
        return f"{self.prefix}stream-ticket-used:{ticket_id}"

    def login_attempts(self, dimension: str, value: str) -> str:
        """Login attempts within the current window for one username (dimension "user") or one client
        address ("address"): a counter that expires with its window (LOGIN_FAILURE_WINDOW)."""
        return f"{self.prefix}login-attempts:{dimension}:{value}"
