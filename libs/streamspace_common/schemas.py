"""Every WebSocket frame and Redis message, defined once as msgspec types (REST bodies: gateway api/).

One message per WebSocket frame, always (§9): frames are tagged unions on the "type" field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# "$(?!\n)": Python's "$" also matches before a trailing newline; the lookahead refuses that and, unlike "\Z",
# still means the same in the ECMAScript regexes OpenAPI clients generate from these patterns.
ACTION_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$(?!\n)"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$(?!\n)"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$(?!\n)"

Action = Annotated[str, msgspec.Meta(pattern=ACTION_PATTERN, description="upper-case verb, e.g. PING")]
Identifier = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
# Hello strings are stored in agents columns of these sizes: a longer one is refused at the edge (4400).
Short = Annotated[str, msgspec.Meta(max_length=64)]
Long = Annotated[str, msgspec.Meta(max_length=255)]
# No NUL: PostgreSQL text cannot hold one, and a frame naming such an id must be refused at the edge
# (4400), not reach the batched writer whose statement it would make PostgreSQL refuse.
CommandId = Annotated[str, msgspec.Meta(max_length=255, pattern="^[^\x00]*$")]
CommandStatus = Literal["pending", "sent", "acknowledged", "completed", "failed", "cancelled", "expired"]
FinalStatus = Literal["completed", "failed"]


class Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    pass


# --- agent -> gateway -------------------------------------------------------------------


# Optional protocol features an agent announces in its hello (and a gateway echoes in its welcome).
# An agent of an earlier release announces none and gets exactly the earlier protocol.
FEATURE_CONFIRM = "confirm"  # the gateway sends `confirm` frames; the agent keeps results until confirmed
FEATURE_INVENTORY = "inventory"  # hello's running/unreported lists are complete: requeue what is in neither
FEATURE_HA = "ha"  # replicas of this agent id may be connected at once; `role` frames say which one is active
# With "ha": an active `role` frame carries the lease secret naming this process as the holder; the agent
# presents it (LEASE_HEADER, on its next connect) to take its lease back through another gateway at once.
FEATURE_FENCE = "fence"
# The gateway counts the agent's WebSocket pings as signs of life (and answers them itself): an idle agent
# sends no heartbeat frame, its ping is the one liveness frame of an interval (issue 27).
FEATURE_PING_LIVENESS = "ping_liveness"
# The agent's sign of life is an unsolicited WebSocket pong (RFC 6455 5.5.3: a unidirectional heartbeat,
# not answered) after an interval in which it sent nothing; it does not ping. The gateway sends nothing on an
# idle socket; the agent finds a dead gateway host by TCP_USER_TIMEOUT on its unacknowledged pongs (liveness.py).
FEATURE_PONG_LIVENESS = "pong_liveness"
FEATURES: tuple[str, ...] = (
    FEATURE_CONFIRM,
    FEATURE_INVENTORY,
    FEATURE_HA,
    FEATURE_FENCE,
    FEATURE_PING_LIVENESS,
    FEATURE_PONG_LIVENESS,
)
CONNECT_PATH = "/api/v1/agents/connect"  # every gateway's agent WebSocket (GET, Authorization: Bearer)
LEASE_HEADER = "X-StreamSpace-Lease"  # a WebSocket handshake header: unknown to a gateway before "fence"
# A WebSocket handshake header an agent sends when it reconnects after a 4412 (MOVE, rebalancing): a gateway
# at or above its fair share answers 409 (the agent tries another URL); an earlier gateway ignores it.
MOVING_HEADER = "X-StreamSpace-Moving"


class Hello(Frame, tag="hello"):
    agent_id: Identifier
    platform: Short
    version: Short
    instance_id: Long
    capabilities: list[str] = []
    concurrency: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: no limit advertised
    features: list[Short] = []
    running: list[CommandId] = []  # commands executing now
    unreported: list[CommandId] = []  # finished, result not confirmed by a gateway yet


class Heartbeat(Frame, tag="heartbeat"):
    pass


class Ack(Frame, tag="ack"):
    command_id: CommandId


class Result(Frame, tag="result"):
    command_id: CommandId
    status: FinalStatus
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = False  # failed, but may succeed later: retried with backoff while attempts remain


AgentFrame = Hello | Heartbeat | Ack | Result


# --- gateway -> agent -------------------------------------------------------------------


class Welcome(Frame, tag="welcome"):
    pod: str
    heartbeat_interval: float
    features: list[str] = []  # only sent to an agent that announced features: the ones both sides use


class Confirm(Frame, tag="confirm"):
    """Results the gateway has committed (or found already final): the agent may forget them.

    Sent only to agents that announced FEATURE_CONFIRM: an earlier agent would refuse an unknown frame type.
    """

    command_ids: list[str]


class Command(Frame, tag="command"):
    command_id: str
    action: str
    payload: dict[str, Any] = {}
    session_id: str | None = None
    epoch: int | None = None  # the lease epoch it was claimed under; only sent to agents that announced FEATURE_HA


class Role(Frame, tag="role"):
    """An HA agent's replica is active (it receives commands) or standby (it starts nothing new).
    Sent only to agents that announced FEATURE_HA, after welcome and on every change."""

    role: Literal["active", "standby"]
    epoch: int  # the lease's epoch now (0: nobody has held it yet)
    lease: str | None = None  # active, to agents that announced FEATURE_FENCE: the holder's secret (see above)


GatewayFrame = Welcome | Command | Confirm | Role


# --- dispatcher -> gateway, over the pod's Redis channel (or its NOTIFY channel) ----------


class Delivery(msgspec.Struct):
    """Unknown fields are ignored (unlike frames), so a dispatcher may add one before every gateway knows it.
    A gateway of the release before `published_at` refuses it: upgrade gateways before dispatchers once."""

    agent_id: str
    command: Command
    attempt: int  # the row's attempts when it was claimed: a late requeue must not undo a newer claim
    epoch: int | None = None  # the agent's lease epoch at the claim (None: an agent without HA)
    published_at: float | None = None  # the dispatcher's wall clock at PUBLISH (publish-to-forward latency)
    # Signed by the dispatcher (delivery_auth.py): all fields above but published_at, the pod it is for
    # and its expiry (unix time), under the key named; a gateway forwards nothing else.
    pod: str | None = None
    expires: float | None = None
    key_id: str | None = None
    signature: bytes | None = None  # HMAC-SHA256 (base64 in JSON)


class HandOver(msgspec.Struct, forbid_unknown_fields=True):
    """A NOTIFY on a replica's own channel while Redis is down: the (command_id, attempt) pairs it is to
    deliver; it reads the rows itself (a NOTIFY payload holds at most 8000 bytes)."""

    commands: list[tuple[str, int]]
    # Signed by the dispatcher as a Delivery is (delivery_auth.py): the pod, the expiry and the pairs.
    pod: str = ""
    expires: float = 0.0
    key_id: str = ""
    signature: bytes = b""
