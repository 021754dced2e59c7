"""Every WebSocket frame, Redis message and REST body, defined once as msgspec types.

One message per WebSocket frame, always (§9): frames are tagged unions on the "type" field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

# "$(?!\n)": Python's "$" also matches before a trailing newline; the lookahead refuses that and, unlike "\Z",
# still means the same in the ECMAScript regexes OpenAPI clients generate from these patterns.
ACTION_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$(?!\n)"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$(?!\n)"

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


# --- REST -------------------------------------------------------------------------------


class CreateCommand(msgspec.Struct, forbid_unknown_fields=True):
    action: Action
    payload: dict[str, Any] = {}
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    command_id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)] | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5


class CommandView(msgspec.Struct):
    id: str
    command_id: str
    agent_id: str
    session_id: str | None
    action: str
    payload: dict[str, Any]
    status: CommandStatus
    error_message: str | None
    result: dict[str, Any] | None
    attempts: int
    max_attempts: int
    dispatched_by: str | None
    delivered_via_pod: str | None
    created_at: datetime
    sent_at: datetime | None
    acknowledged_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class AgentView(msgspec.Struct):
    agent_id: str
    status: Literal["online", "offline"]
    gateway_pod: str | None
    platform: str | None
    version: str | None
    capabilities: list[str]
    concurrency: int
    instance_id: str | None
    last_heartbeat: datetime | None
    connected_at: datetime | None


class AgentList(msgspec.Struct):
    agents: list[AgentView]


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody
