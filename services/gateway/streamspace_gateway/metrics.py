"""Prometheus metrics of the gateway."""

from prometheus_client import Counter, Gauge

AGENTS_CONNECTED = Gauge("streamspace_gateway_agents_connected", "Agent sockets open on this replica")
COMMANDS_FORWARDED = Counter("streamspace_gateway_commands_forwarded_total", "Commands sent to a local agent socket")
COMMANDS_REQUEUED = Counter(
    "streamspace_gateway_commands_requeued_total", "Commands put back to pending: the agent was not on this replica"
)
FRAMES_REJECTED = Counter("streamspace_gateway_frames_rejected_total", "Agent frames refused", ["reason"])
AGENT_RESULTS = Counter("streamspace_gateway_agent_results_total", "Results reported by agents", ["status"])
