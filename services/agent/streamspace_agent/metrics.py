"""Prometheus metrics of the agent."""

from prometheus_client import Counter, Gauge, Histogram

CONNECTED = Gauge("streamspace_agent_connected", "1 while a gateway socket is registered")
CONNECTS = Counter("streamspace_agent_connects_total", "Successful registrations with a gateway")
COMMANDS = Counter("streamspace_agent_commands_total", "Commands executed", ["action", "status"])
REDELIVERIES = Counter(
    "streamspace_agent_redeliveries_total", "Commands received again; answered from the earlier result"
)
UNCONFIRMED = Gauge(
    "streamspace_agent_results_unconfirmed", "Results kept (journalled) until a gateway confirms it committed them"
)
ACTIVE = Gauge("streamspace_agent_active", "1 while this replica is the agent's active one (HA; 1 without HA)")
TUNNELS_OPEN = Gauge("streamspace_agent_tunnels_open", "Stream tunnels (session endpoint <-> gateway) open now")
TUNNELS_REFUSED = Counter(
    "streamspace_agent_tunnels_refused_total", "OPEN_TUNNEL refused: a URL outside GATEWAY_URLS or a foreign endpoint"
)
TUNNEL_BYTES = Counter(
    "streamspace_agent_tunnel_bytes_total", "Bytes piped through stream tunnels", ["direction"]
)  # to_gateway: from the session; to_session: from the browser
STALE_COMMANDS = Counter(
    "streamspace_agent_stale_commands_total", "Commands refused: their lease epoch is older than the newest told"
)
RECONNECT_SECONDS = Histogram(
    "streamspace_agent_reconnect_seconds",
    "From a registered gateway socket closing to the next one registered (welcomed), any gateway",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SESSION_READY_SECONDS = Histogram(
    "streamspace_agent_session_ready_seconds",
    "docker, kubernetes: from a session's start (or unpause) to its port answering (outcome=ready), or to giving "
    "up: SESSION_READY_TIMEOUT passed (timeout) or the workload died meanwhile (exited)",
    ["platform", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MOVES = Counter(
    "streamspace_agent_moves_total", "Sockets a gateway closed with 4412 (rebalancing): the agent moved to another URL"
)
