"""Prometheus metrics of the dispatcher."""

from prometheus_client import Counter, Gauge, Histogram

COMMANDS_CLAIMED = Counter("streamspace_dispatcher_commands_claimed_total", "Commands claimed and marked sent")
COMMANDS_UNROUTABLE = Counter(
    "streamspace_dispatcher_commands_unroutable_total",
    "Published commands that reached no gateway (stale mapping); put back to pending",
)
CLAIM_BATCH = Histogram(
    "streamspace_dispatcher_claim_batch_size", "Commands per claim", buckets=(1, 2, 5, 10, 50, 100, 500, 1000)
)
DEADLINES_PASSED = Counter(
    "streamspace_dispatcher_deadlines_passed_total",
    "Commands whose ack deadline (deadline=ack) or completion deadline (deadline=completion) passed",
    ["deadline", "outcome"],
)
RETRIES_SCHEDULED = Counter(
    "streamspace_dispatcher_retries_scheduled_total", "Waiting commands put on a RabbitMQ wait queue"
)
RETRY_LATENESS = Histogram(
    "streamspace_dispatcher_retry_lateness_seconds",
    "How long after its due time a retry came out of RabbitMQ",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
WAKEUPS = Counter("streamspace_dispatcher_wakeups_total", "Claim rounds", ["reason"])
COMMANDS_ROUTED = Counter(
    "streamspace_dispatcher_commands_routed_total", "Commands handed to a gateway replica, by path", ["path"]
)
COMMANDS_OPEN = Gauge(
    "streamspace_dispatcher_commands_open",
    "Commands pending, sent or acknowledged now (every sweep interval)",
    ["status"],
)
COMMANDS_OLDEST = Gauge(
    "streamspace_dispatcher_commands_oldest_seconds",
    "Seconds the longest-open command of each open status has been in it (pending: since its last change); "
    "0 with none (every sweep interval)",
    ["status"],
)
SESSIONS_IDLE_HIBERNATED = Counter(
    "streamspace_dispatcher_sessions_idle_hibernated_total", "Running sessions asked to hibernate for idleness"
)
INVENTORIES_REQUESTED = Counter(
    "streamspace_dispatcher_inventories_requested_total", "INVENTORY_SESSIONS commands of the periodic reconciliation"
)
AUDIT_PRUNED = Counter(
    "streamspace_dispatcher_audit_pruned_total", "Audit trail rows deleted for being older than AUDIT_RETENTION_DAYS"
)
BACKLOG_TOP = Gauge(
    "streamspace_dispatcher_agent_backlog",
    "Pending commands of the agents with the most (the top 10 only, every sweep interval; an agent that "
    "drops out of the top 10 drops out of the gauge)",
    ["agent_id"],
)
SESSIONS = Gauge("streamspace_sessions", "Sessions (not deleted) by state, every idle check interval", ["state"])
ROWS_PRUNED = Counter(
    "streamspace_dispatcher_rows_pruned_total",
    "Rows deleted for being past their retention, by table (inventories: INVENTORY_SESSIONS commands)",
    ["table"],
)
OLDEST_RETAINED = Gauge(
    "streamspace_dispatcher_oldest_retained_seconds",
    "Age of the oldest audit row (audit_log) and finished command (agent_commands) still stored, after each "
    "retention round; 0 when there is none",
    ["table"],
)
COMMANDS_EXPIRED = Counter(
    "streamspace_dispatcher_commands_expired_total", "Pending commands that reached their expires_at (ended expired)"
)
SESSIONS_LOST = Counter(
    "streamspace_dispatcher_sessions_lost_total", "Sessions marked lost: their agent was gone past AGENT_LOST_AFTER"
)
