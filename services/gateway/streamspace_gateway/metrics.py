"""Prometheus metrics of the gateway."""

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class PlainHistogram(Collector):
    """A histogram for the hottest path, one observation per frame of every agent socket: plain counts
    (a bisect and two additions, ~0.3 us) where a prometheus_client Histogram takes locks (~2-4 us; at
    50,000 idle sockets ~2 % of a core). Only the event loop's thread may observe."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [float(bound) for bound in buckets]
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        REGISTRY.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value equal to a bound is in its bucket
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative, total = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            cumulative.append((bound, total))
        family.add_metric([], cumulative, self.sum)
        yield family


AGENTS_CONNECTED = Gauge("streamspace_gateway_agents_connected", "Agent sockets open on this replica")
AGENT_CONNECTIONS = Counter(
    "streamspace_gateway_agent_connections_total", "Agent sockets registered on this replica (connects and reconnects)"
)
STALE_CLOSES = Counter(
    "streamspace_gateway_stale_closes_total", "Agent sockets closed after 3 heartbeat intervals without a frame"
)
PUBLISH_TO_FORWARD = Histogram(
    "streamspace_gateway_publish_to_forward_seconds",
    "From the dispatcher's PUBLISH to the command written to the agent's socket (Redis path; wall clocks)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
)
COMMANDS_FORWARDED = Counter("streamspace_gateway_commands_forwarded_total", "Commands sent to a local agent socket")
DELIVERIES_REFUSED = Counter(
    "streamspace_gateway_deliveries_refused_total",
    "Deliveries (Redis) and hand-overs (PostgreSQL) refused: unsigned, unknown key, bad signature, another pod's, "
    "expired, replayed or malformed; never forwarded",
    ["path", "reason"],
)
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
HA_PROMOTIONS = Counter(
    "streamspace_gateway_ha_promotions_total", "HA agent replicas made active here after another held the lease"
)
STREAMS_OPEN = Gauge("streamspace_gateway_streams_open", "Browser streams piped through this replica now")
STREAM_BYTES = Counter(
    "streamspace_gateway_stream_bytes_total", "Stream bytes piped by this replica", ["direction"]
)  # to_browser: from the session; to_session: from the browser
TUNNEL_SETUP = Histogram(
    "streamspace_gateway_tunnel_setup_seconds",
    "From a browser's stream upgrade to the agent's data WebSocket dialled back to this replica",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STREAMS_REFUSED = Counter(
    "streamspace_gateway_streams_refused_total", "Streams closed before any byte flowed", ["reason"]
)
HEARTBEAT_AGE_MAX = Gauge(
    "streamspace_gateway_heartbeat_age_max_seconds",
    "Seconds since the last frame of the quietest agent socket on this replica (every heartbeat interval; "
    "0 with no socket). Past 3 intervals the socket is closed as stale",
)
HEARTBEAT_GAP = PlainHistogram(
    "streamspace_gateway_heartbeat_gap_seconds",
    "Time between two frames (heartbeats or any other) read from one agent socket",
    buckets=(0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120),
)
FAIR_SHARE = Gauge(
    "streamspace_gateway_fair_share_agents",
    "Agents online on all replicas divided by the live replicas, as this replica's last rebalancing round read it",
)
AGENTS_MOVED = Counter(
    "streamspace_gateway_agents_moved_total", "Agent sockets this replica closed with 4412 (rebalancing: move)"
)
MOVERS_REFUSED = Counter(
    "streamspace_gateway_movers_refused_total",
    "Connects of moving agents (X-StreamSpace-Moving) refused with 409: this replica was at its fair share",
)
