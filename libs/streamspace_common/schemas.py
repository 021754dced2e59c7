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
CommandStatus = Literal["pending", "sent", "acknowledged", "completed", "failed", "cancelled"]
FinalStatus = Literal["completed", "failed"]


class Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    pass


# --- agent -> gateway -------------------------------------------------------------------


class Hello(Frame, tag="hello"):
    agent_id: Identifier
    platform: str
    version: str
    instance_id: str
    capabilities: list[str] = []
    concurrency: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: no limit advertised


class Heartbeat(Frame, tag="heartbeat"):
    pass


class Ack(Frame, tag="ack"):
    command_id: str


class Result(Frame, tag="result"):
    command_id: str
    status: FinalStatus
    result: dict[str, Any] | None = None
    error: str | None = None


AgentFrame = Hello | Heartbeat | Ack | Result


# --- gateway -> agent -------------------------------------------------------------------


class Welcome(Frame, tag="welcome"):
    pod: str
    heartbeat_interval: float


class Command(Frame, tag="command"):
    command_id: str
    action: str
    payload: dict[str, Any] = {}
    session_id: str | None = None


GatewayFrame = Welcome | Command


# --- dispatcher -> gateway, over the pod's Redis channel --------------------------------


class Delivery(msgspec.Struct, forbid_unknown_fields=True):
    agent_id: str
    command: Command
    attempt: int  # the row's attempts when it was claimed: a late requeue must not undo a newer claim
