"""Session action payloads and results, typed once (§5).

The gateway decodes a command's payload with `decode_payload` when the command arrives, and the agent
decodes it again before running it, so both sides refuse the same bad input. Action names are
upper-case verbs. A session action's result (the command's `result` dict) is a `SessionReport`;
an agent's inventory is a list of `SessionInventoryItem`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

CREATE_SESSION = "CREATE_SESSION"
STOP_SESSION = "STOP_SESSION"
HIBERNATE_SESSION = "HIBERNATE_SESSION"
WAKE_SESSION = "WAKE_SESSION"
DELETE_SESSION = "DELETE_SESSION"
# No payload: the agent answers an InventoryReport (what its platform holds); the control plane
# reconciles with it (migration 0008) and removes workloads no session owns with DELETE_SESSION.
INVENTORY_SESSIONS = "INVENTORY_SESSIONS"
# A stream's data path (docs/streams.md): the agent connects to the session's endpoint and dials a data
# WebSocket back to the gateway replica that holds the browser, with a single-use tunnel token.
OPEN_TUNNEL = "OPEN_TUNNEL"
# Stop a command that runs on the agent (POST /api/v1/commands/{id}/cancel on one sent or acknowledged):
# the agent cancels its handler's task, and remembers the id so that a late delivery of it does not run.
# Inserted only by the cancel (commands.sql `cancel`), for agents that advertise it as a capability; it is
# delivered, signed, like every command. Its result: {"command_id", "state": running | finished | unknown}.
CANCEL_COMMAND = "CANCEL_COMMAND"

# A session id is used as-is in platform names: a Docker container name, a Kubernetes object name and
# label value (a DNS label of at most 63 characters, "ss-" prepended). A UUID fits.
SESSION_ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$(?!\n)"
SessionId = Annotated[
    str, msgspec.Meta(pattern=SESSION_ID_PATTERN, description="lower-case letters, digits and '-', at most 48")
]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$(?!\n)")]
SessionState = Literal["running", "hibernated", "stopped", "deleted", "failed"]


class Resources(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Limits for one session's workload."""

    cpu: Annotated[float, msgspec.Meta(gt=0, le=64, description="CPU cores, e.g. 0.5")] = 0.5
    memory: Annotated[int, msgspec.Meta(ge=16, le=1024 * 1024, description="memory in MiB")] = 256


class CreateSession(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """CREATE_SESSION: make the session's workload exist and run (running it again changes nothing).

    `image` is what the docker and kubernetes platforms run (with the image's own command);
    `command` is what the local platform runs: an argv list in which `{port}` becomes the session's
    port and `{python}` the agent's Python interpreter. `ports` are the container ports; the first is
    the one the session is reached on (the local platform picks a free one and passes it as PORT).
    """

    session_id: SessionId
    name: Annotated[str, msgspec.Meta(max_length=200, description="the template's name")] = ""
    image: Annotated[str, msgspec.Meta(max_length=500)] = ""
    command: list[Annotated[str, msgspec.Meta(max_length=4096)]] = []
    ports: Annotated[list[Port], msgspec.Meta(max_length=16)] = []
    resources: Resources = Resources()
    env: dict[EnvName, Annotated[str, msgspec.Meta(max_length=32 * 1024)]] = {}


class OpenTunnel(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """OPEN_TUNNEL: connect to host:port (the session's endpoint) and to `url` (a WebSocket on the gateway
    replica holding the browser; `token` is the single-use tunnel token it expects, and the only
    credential sent there), then pipe bytes both ways until either end closes. Not a session action: it
    changes no session state. The agent refuses a `url` outside its GATEWAY_URLS (TUNNEL_NETWORKS) and a
    host:port that is not the endpoint its driver reports for `session_id`."""

    session_id: SessionId
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    port: Port
    url: Annotated[str, msgspec.Meta(pattern=r"^wss?://[^\s]+$(?!\n)", max_length=2000)]
    token: Annotated[str, msgspec.Meta(min_length=16, max_length=200)]


class CancelCommand(msgspec.Struct, frozen=True):
    """CANCEL_COMMAND's payload (unknown fields ignored: a later control plane may add one)."""

    command_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class SessionAction(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The payload of an action on an existing session."""

    session_id: SessionId


class StopSession(SessionAction, frozen=True):
    """STOP_SESSION: make sure the workload does not run; its storage stays."""


class HibernateSession(SessionAction, frozen=True):
    """HIBERNATE_SESSION: pause the workload so that WAKE_SESSION resumes it; its storage stays."""


class WakeSession(SessionAction, frozen=True):
    """WAKE_SESSION: run a hibernated or stopped workload again."""


class DeleteSession(SessionAction, frozen=True):
    """DELETE_SESSION: make sure the workload and its storage are gone."""


SessionPayload = CreateSession | StopSession | HibernateSession | WakeSession | DeleteSession

PAYLOAD_TYPES: dict[str, type[SessionPayload]] = {
    CREATE_SESSION: CreateSession,
    STOP_SESSION: StopSession,
    HIBERNATE_SESSION: HibernateSession,
    WAKE_SESSION: WakeSession,
    DELETE_SESSION: DeleteSession,
}
SESSION_ACTIONS = tuple(PAYLOAD_TYPES)


class Endpoint(msgspec.Struct, frozen=True):
    """Where a running session is reached: a host name or address and a TCP port."""

    host: str
    port: int


class SessionReport(msgspec.Struct, frozen=True, omit_defaults=True):
    """A session action's result: the state the workload is in now.

    `endpoint` is set when the session runs and is reachable; `reason` says why when state is "failed".
    """

    session_id: str
    state: SessionState
    endpoint: Endpoint | None = None
    reason: str | None = None


class SessionInventoryItem(msgspec.Struct, frozen=True, omit_defaults=True):
    """One session an agent finds on its platform (by labels, or its own process table)."""

    session_id: str
    state: SessionState
    endpoint: Endpoint | None = None


class InventoryReport(msgspec.Struct, frozen=True):
    """INVENTORY_SESSIONS' result: the sessions found, and the ids of every workload (or leftover part of
    one) carrying the agent's labels, running or not."""

    sessions: list[SessionInventoryItem]
    workloads: list[str]


def decode_payload(action: str, payload: dict[str, Any], session_id: str | None = None) -> SessionPayload:
    """Validate a session action's payload; `session_id` (the command's own) fills in a missing one.

    Raises msgspec.ValidationError naming the bad field, or KeyError for an action that is not a
    session action.
    """
    kind = PAYLOAD_TYPES[action]
    if session_id is not None and "session_id" not in payload:
        payload = {**payload, "session_id": session_id}
    elif session_id is not None and payload["session_id"] != session_id:
        given = payload["session_id"]
        raise msgspec.ValidationError(
            f"session_id {given!r} differs from the command's {session_id!r} - at `$.session_id`"
        )
    return msgspec.convert(payload, kind)
