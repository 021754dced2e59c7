"""Prometheus metrics of the dispatcher."""

from prometheus_client import Counter, Histogram

COMMANDS_CLAIMED = Counter("streamspace_dispatcher_commands_claimed_total", "Commands claimed and marked sent")
COMMANDS_UNROUTABLE = Counter(
    "streamspace_dispatcher_commands_unroutable_total",
    "Published commands that reached no gateway (stale mapping); put back to pending",
)
CLAIM_BATCH = Histogram(
    "streamspace_dispatcher_claim_batch_size", "Commands per claim", buckets=(1, 2, 5, 10, 50, 100, 500, 1000)
)
ACK_TIMEOUTS = Counter("streamspace_dispatcher_ack_timeouts_total", "Commands whose ack deadline passed", ["outcome"])
WAKEUPS = Counter("streamspace_dispatcher_wakeups_total", "Claim rounds", ["reason"])
COMMANDS_ROUTED = Counter(
    "streamspace_dispatcher_commands_routed_total", "Commands handed to a gateway replica, by path", ["path"]
)
