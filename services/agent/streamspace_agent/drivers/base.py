"""What every driver shares: the diagnostics, decoding session payloads, and the session dispatch.

A platform driver subclasses `SessionDriver` and implements the five session operations plus
`inventory` and `workload_ids`; the base turns a Command into a call and the call's SessionReport into
the command's result dict. A payload that does not decode fails the command (it was wrong); a
workload that cannot reach the asked state completes the command with state "failed" and a reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Annotated, Any

import msgspec
import structlog

from streamspace_common.actions import (
    CREATE_SESSION,
    DELETE_SESSION,
    HIBERNATE_SESSION,
    INVENTORY_SESSIONS,
    SESSION_ACTIONS,
    STOP_SESSION,
    WAKE_SESSION,
    CreateSession,
    DeleteSession,
    Endpoint,
    InventoryReport,
    SessionInventoryItem,
    SessionPayload,
    SessionReport,
    decode_payload,
)
from streamspace_common.schemas import Command

from .. import metrics
from . import CommandFailed

log = structlog.get_logger("agent.driver")

MANAGED_LABEL = "io.streamspace.managed"
SESSION_LABEL = "io.streamspace.session_id"
AGENT_LABEL = "io.streamspace.agent_id"
TEMPLATE_LABEL = "io.streamspace.template"
DIAGNOSTICS = ("PING", "ECHO", "SLEEP", "FAIL")


class SleepArgs(msgspec.Struct, forbid_unknown_fields=True):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)]


class FailArgs(msgspec.Struct, forbid_unknown_fields=True):
    error: Annotated[str, msgspec.Meta(max_length=1000)] = "failed on purpose"
    retryable: bool = False


class SessionFailed(Exception):
    """The workload could not be brought to the asked state; the message is the report's reason."""


async def run_diagnostic(agent_id: str, command: Command) -> dict[str, Any]:
    """PING, ECHO, SLEEP and FAIL (on purpose, retryable or not): the same on every platform."""
    if command.action == "PING":
        return {"pong": True, "agent_id": agent_id, "time": time.time()}
    if command.action == "ECHO":
        return {"echo": command.payload}
    if command.action == "FAIL":
        try:
            failure = msgspec.convert(command.payload, FailArgs)
        except msgspec.ValidationError as exc:
            raise CommandFailed(f"invalid FAIL payload: {exc}") from exc
        raise CommandFailed(failure.error, retryable=failure.retryable)
    try:
        args = msgspec.convert(command.payload, SleepArgs)
    except msgspec.ValidationError as exc:
        raise CommandFailed(f"invalid SLEEP payload: {exc}") from exc
    await asyncio.sleep(args.seconds)
    return {"slept": args.seconds}


async def poll_until(done: Callable[[], bool], within: float, interval: float = 0.05) -> bool:
    """Check `done` every `interval` seconds until it holds (True) or `within` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


PROBE_HOLD = 0.5  # seconds a connection must stay open (or bring bytes) to count as answered (loaded host: generous)
PROBE_INTERVAL = 0.2  # seconds between two readiness probes


async def port_answers(host: str, port: int, hold: float = PROBE_HOLD) -> bool:
    """One readiness probe: a TCP connect that the peer neither refuses nor closes at once.

    A connection closed (or reset) within `hold` seconds without a byte is what a forwarder with
    nobody behind it does (the engine's docker-proxy accepts on a published port and drops the
    connection when the container does not listen), so it does not count; a server that speaks first
    (VNC's `RFB 003.008`) or waits for the client (HTTP) does. `hold` 0: the connect alone counts
    (nothing forwards in between)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=max(hold, 2.0))
    except (OSError, TimeoutError):
        return False
    try:
        return hold <= 0 or await asyncio.wait_for(reader.read(1), timeout=hold) != b""
    except TimeoutError:
        return True  # held open: a listener waiting for the client to speak
    except OSError:
        return False
    finally:
        writer.close()


async def until_ready(
    endpoint: Endpoint,
    port: int,
    within: float,
    alive: Callable[[], Awaitable[str | None]],
    platform: str,
    hold: float = PROBE_HOLD,
) -> None:
    """Probe the endpoint until it answers; SessionFailed after `within` seconds (SESSION_READY_TIMEOUT),
    naming the session's own `port` (the template's), or as soon as `alive` gives a reason (it died)."""
    started = time.monotonic()
    while not await port_answers(endpoint.host, endpoint.port, hold):
        if dead := await alive():
            observe_ready(platform, started, "exited")
            raise SessionFailed(dead)
        if time.monotonic() > started + within:
            observe_ready(platform, started, "timeout")
            raise SessionFailed(not_ready_reason(port, within))
        await asyncio.sleep(PROBE_INTERVAL)
    observe_ready(platform, started, "ready")


def observe_ready(platform: str, started: float, outcome: str) -> None:
    """streamspace_agent_session_ready_seconds: how long a readiness wait took, and how it ended."""
    metrics.SESSION_READY_SECONDS.labels(platform=platform, outcome=outcome).observe(time.monotonic() - started)


def not_ready_reason(port: int, within: float) -> str:
    """The one wording of a readiness failure, on every platform."""
    return f"port {port} did not answer within {within:g} s"


class SessionDriver:
    """Base of the platform drivers: dispatch, one lock per session, orphan removal."""

    platform = "none"

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self._locks: dict[str, asyncio.Lock] = {}
        self._operations: dict[str, Callable[[SessionPayload], Awaitable[SessionReport]]] = {
            CREATE_SESSION: self._create,
            STOP_SESSION: lambda p: self.stop(p.session_id),
            HIBERNATE_SESSION: lambda p: self.hibernate(p.session_id),
            WAKE_SESSION: lambda p: self.wake(p.session_id),
            DELETE_SESSION: lambda p: self.delete(p.session_id),
        }

    @property
    def actions(self) -> list[str]:
        return sorted((*DIAGNOSTICS, *SESSION_ACTIONS, INVENTORY_SESSIONS))

    async def execute(self, command: Command) -> dict[str, Any]:
        if command.action in DIAGNOSTICS:
            return await run_diagnostic(self.agent_id, command)
        if command.action == INVENTORY_SESSIONS:
            return await self.report_inventory()
        if command.action not in SESSION_ACTIONS:
            raise CommandFailed(
                f"unknown action {command.action!r} for platform {self.platform}; supported: {', '.join(self.actions)}"
            )
        try:
            payload = decode_payload(command.action, command.payload, command.session_id)
        except msgspec.ValidationError as exc:
            raise CommandFailed(f"invalid {command.action} payload: {exc}") from exc
        report = await self.run(command.action, payload)
        result: dict[str, Any] = msgspec.to_builtins(report)
        return result

    async def run(self, action: str, payload: SessionPayload) -> SessionReport:
        """One session action, serialised per session; a SessionFailed becomes a "failed" report."""
        session_id = payload.session_id
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        bound = log.bind(session_id=session_id, action=action, platform=self.platform)
        async with lock:
            try:
                report = await self._operations[action](payload)
            except SessionFailed as exc:
                report = SessionReport(session_id=session_id, state="failed", reason=str(exc))
        if action == DELETE_SESSION:
            self._locks.pop(session_id, None)
        bound.info("session_action", state=report.state, reason=report.reason)
        return report

    async def _create(self, payload: SessionPayload) -> SessionReport:
        if not isinstance(payload, CreateSession):
            raise TypeError(f"CREATE_SESSION with a {type(payload).__name__} payload")
        return await self.create(payload)

    async def report_inventory(self) -> dict[str, Any]:
        """INVENTORY_SESSIONS: what the platform holds, for the control plane to reconcile with."""
        report = InventoryReport(sessions=await self.inventory(), workloads=await self.workload_ids())
        result: dict[str, Any] = msgspec.to_builtins(report)
        return result

    async def remove_orphans(self, known_session_ids: Collection[str]) -> list[str]:
        known = set(known_session_ids)
        orphans = sorted(set(await self.workload_ids()) - known)
        for session_id in orphans:
            log.warning("orphan_removed", session_id=session_id, platform=self.platform)
            await self.run(DELETE_SESSION, DeleteSession(session_id=session_id))
        return orphans

    # --- what a platform implements ------------------------------------------------------

    async def create(self, spec: CreateSession) -> SessionReport:
        raise NotImplementedError

    async def stop(self, session_id: str) -> SessionReport:
        raise NotImplementedError

    async def hibernate(self, session_id: str) -> SessionReport:
        raise NotImplementedError

    async def wake(self, session_id: str) -> SessionReport:
        raise NotImplementedError

    async def delete(self, session_id: str) -> SessionReport:
        raise NotImplementedError

    async def inventory(self) -> list[SessionInventoryItem]:
        raise NotImplementedError

    async def workload_ids(self) -> list[str]:
        """Session ids of every workload (or leftover part of one) carrying this agent's labels."""
        raise NotImplementedError

    async def close(self) -> None:
        return None
