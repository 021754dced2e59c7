"""Prometheus metrics of the gateway."""

from prometheus_client import Counter, Gauge, Histogram

AGENTS_CONNECTED = Gauge("streamspace_gateway_agents_connected", "Agent sockets open on this replica")
COMMANDS_FORWARDED = Counter("streamspace_gateway_commands_forwarded_total", "Commands sent to a local agent socket")
COMMANDS_REQUEUED = Counter(
    "streamspace_gateway_commands_requeued_total", "Commands put back to pending: the agent was not on this replica"
)
FRAMES_REJECTED = Counter("streamspace_gateway_frames_rejected_total", "Agent frames refused", ["reason"])
AGENT_RESULTS = Counter("streamspace_gateway_agent_results_total", "Results reported by agents", ["status"])
FRAMES_WAITING = Gauge(
    "streamspace_gateway_frames_waiting", "Acks and results read from agent sockets and not yet committed"
)
WRITE_BATCH = Histogram(
    "streamspace_gateway_write_batch_frames",
    "Acks and results committed per transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
CONFIRMS_SENT = Counter("streamspace_gateway_confirms_sent_total", "confirm frames sent to agents")
COMMANDS_REQUEUED_ON_HELLO = Counter(
    "streamspace_gateway_commands_requeued_on_hello_total",
    "Commands an agent's hello showed it never saw (lost with an earlier socket), put back at once",
)
