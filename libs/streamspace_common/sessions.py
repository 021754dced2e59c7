"""The session lifecycle (§5): its states, the verbs a user may ask for, and every statement that moves one.

    pending -> starting -> running <-> hibernated        (stop -> stopping -> stopped; wake -> starting)
                                    \\-> failed           (with the reason)
    any of them -> lost      (its agent was deleted, or gone past AGENT_LOST_AFTER: final, deleted by its user)

Two kinds of move, one home. What the control plane asks for is here and in `sessions.sql`: placing
a new session (one transaction: the session and its CREATE_SESSION command), a verb (stop, hibernate,
wake, delete: `desired_state` and the command in one statement, so a repeated verb adds nothing), the
idle check and the reconciliation round. What the agents report moves the session through the
triggers of migration 0008: a session command that ends (its SessionReport gives the state, the
endpoint or the reason; a command that fails or is cancelled fails the session with its error), and an
inventory that lacks a session believed running (failed) or holds a workload no session owns (a
DELETE_SESSION for it). Whatever path ends a command (a gateway's result, a dispatcher's deadline, an
operator's cancel), the session follows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import structlog

from .actions import DELETE_SESSION, HIBERNATE_SESSION, INVENTORY_SESSIONS, STOP_SESSION, WAKE_SESSION
from .db import load_queries

QUERIES = load_queries("streamspace_common", "sessions.sql")
SessionStateName = Literal["pending", "starting", "running", "hibernated", "stopping", "stopped", "failed", "lost"]
STATES: tuple[SessionStateName, ...] = (
    "pending",
    "starting",
    "running",
    "hibernated",
    "stopping",
    "stopped",
    "failed",
    "lost",
)
Verb = Literal["stop", "hibernate", "wake", "delete"]
log = structlog.get_logger("sessions")
PLACEMENT_TRIES = 5  # picks a creation makes when the agent it locked turned out full (another took its slot)
# Run inside a move's transaction with the moved row (the gateway's audit record: it commits with the move)
AlsoInTransaction = Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[None]]
__all__ = [
    "INVENTORY_SESSIONS",
    "STATES",
    "VERBS",
    "AlsoInTransaction",
    "NoAgent",
    "Placement",
    "QuotaExceeded",
    "SessionLifecycle",
]


@dataclass(frozen=True)
class VerbRule:
    action: str
    desired: str  # desired_state it sets
    state: str | None  # state it sets at once (None: unchanged until the agent reports)
    allowed_from: tuple[str, ...]  # desired states it may be asked in


VERBS: dict[Verb, VerbRule] = {
    "stop": VerbRule(STOP_SESSION, "stopped", "stopping", ("running", "hibernated", "stopped")),
    "hibernate": VerbRule(HIBERNATE_SESSION, "hibernated", None, ("running", "hibernated")),
    "wake": VerbRule(WAKE_SESSION, "running", "starting", ("running", "hibernated", "stopped")),
    "delete": VerbRule(DELETE_SESSION, "deleted", "stopping", ("running", "hibernated", "stopped")),
}


class QuotaExceeded(Exception):
    def __init__(self, quota: int) -> None:
        super().__init__(f"the session quota of {quota} (SESSION_QUOTA) is reached; stop or delete a session first")
        self.quota = quota


class NoAgent(Exception):
    """No online agent fits; `full` says whether some would fit but have no free capacity."""

    def __init__(self, full: bool) -> None:
        self.full = full
        super().__init__(
            "every agent that fits is at its advertised max_sessions"
            if full
            else "no online agent fits (platform, agent_id and the template's platforms)"
        )


@dataclass(frozen=True)
class Placement:
    template: str
    platforms: list[str]  # the template's allowed platforms; empty: any
    idle_timeout_seconds: int
    payload: dict[str, Any]  # the CREATE_SESSION payload without session_id
    platform: str | None = None  # asked for by the caller
    agent_id: str | None = None  # asked for by the caller
    heartbeat_within: float = 30.0  # seconds: an agent without a heartbeat since is not placed on
    name: str | None = None  # what the owner calls the session (None: no name)


class SessionLifecycle:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self, session_id: str, user_id: str, quota: int, placement: Placement, also: AlsoInTransaction | None = None
    ) -> asyncpg.Record:
        """Pick an agent and insert the session and its CREATE_SESSION command in one transaction
        (with `also(conn, session)` in it, if given). Locks: the user's (quota), then the picked agent's
        (its free slots): creations of other users on other agents never wait for this one."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["lock_user_placement"], user_id)
            if await conn.fetchval(QUERIES["user_session_count"], user_id) >= quota:
                raise QuotaExceeded(quota)
            agent = await self.pick_and_lock(conn, placement)
            row: asyncpg.Record = await conn.fetchrow(
                QUERIES["create_session"],
                session_id,
                user_id,
                placement.template,
                agent["agent_id"],
                agent["platform"],
                placement.idle_timeout_seconds,
                placement.payload,
                placement.name,
            )
            if also is not None:
                await also(conn, row)
        log.info("session_placed", session_id=session_id, agent_id=agent["agent_id"], load=agent["sessions"])
        return row

    async def pick_and_lock(self, conn: asyncpg.Connection, placement: Placement) -> asyncpg.Record:
        """The least loaded agent that fits, holding its placement lock, with a free slot counted under that
        lock. An agent whose lock another creation holds is passed over (SKIP LOCKED, in advisory locks), and
        one found full under its lock too; only when every fitting agent is busy does it wait for a lock."""
        filters = (placement.platforms, placement.platform, placement.agent_id, placement.heartbeat_within)
        passed: list[str] = []  # busy ones (a pass per concurrent creation at most) and full ones
        full = 0
        while full < PLACEMENT_TRIES:
            agent: asyncpg.Record | None = await conn.fetchrow(QUERIES["pick_agent"], *filters, passed)
            if agent is None and passed:  # every fitting agent is busy or full: wait for the least loaded
                agent = await conn.fetchrow(QUERIES["pick_agent"], *filters, [])
                if agent is not None:
                    await conn.execute(QUERIES["lock_agent_placement"], agent["agent_id"])
            elif agent is not None and not await conn.fetchval(QUERIES["try_lock_agent_placement"], agent["agent_id"]):
                passed.append(agent["agent_id"])
                continue
            if agent is None:
                break
            if await conn.fetchval(QUERIES["agent_has_room"], agent["agent_id"]):
                return agent
            passed.append(agent["agent_id"])
            full += 1
        raise NoAgent(full=await conn.fetchval(QUERIES["fitting_agents"], *filters) > 0)

    async def request(
        self, session_id: str, verb: Verb, quota: int, also: AlsoInTransaction | None = None
    ) -> asyncpg.Record | None:
        """Ask for a verb: the session row with `command_id` (None when it was already asked for), or
        None when the session is gone or the verb is not allowed in its desired state. Waking a stopped or
        failed session makes it count again: under the placement locks (its user's, its agent's), like a
        creation, it must fit the owner's quota (QuotaExceeded) and its agent's max_sessions (NoAgent).
        `also(conn, session)` runs in the same transaction when the verb moved the session."""
        rule = VERBS[verb]
        async with self.pool.acquire() as conn, conn.transaction():
            if verb == "delete":  # a lost session has no agent to ask: its row goes at once
                lost: asyncpg.Record | None = await conn.fetchrow(QUERIES["delete_lost"], session_id)
                if lost is not None:
                    if also is not None:
                        await also(conn, lost)
                    return lost
            if verb == "wake":
                await self.lock_for_wake(conn, session_id)
                room = await conn.fetchrow(QUERIES["room_to_wake"], session_id)
                if room is not None and room["owned"] >= quota:
                    raise QuotaExceeded(quota)
                if room is not None and 0 < room["max_sessions"] <= room["load"]:
                    raise NoAgent(full=True)
            row: asyncpg.Record | None = await conn.fetchrow(
                QUERIES["request"], session_id, rule.desired, rule.state, rule.action, list(rule.allowed_from)
            )
            if row is not None and also is not None:
                await also(conn, row)
        return row

    @staticmethod
    async def lock_for_wake(conn: asyncpg.Connection, session_id: str) -> None:
        """Waking makes a session count again: its user's lock, then its agent's, as a creation takes them."""
        owner = await conn.fetchrow(QUERIES["session_owner_and_agent"], session_id)
        if owner is not None:
            await conn.execute(QUERIES["lock_user_placement"], str(owner["user_id"]))
            await conn.execute(QUERIES["lock_agent_placement"], owner["agent_id"])

    async def touch(self, session_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.pool.fetchrow(QUERIES["touch_activity"], session_id)
        return row

    async def count_by_state(self) -> dict[str, int]:
        """Sessions not deleted, by state: every state of STATES, 0 where none."""
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        counts.update({row["state"]: row["count"] for row in await self.pool.fetch(QUERIES["sessions_by_state"])})
        return counts

    async def hibernate_idle(self, limit: int) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(QUERIES["hibernate_idle"], limit)
        for row in rows:
            log.info("session_idle", session_id=row["id"], agent_id=row["agent_id"], idle=row["idle_timeout_seconds"])
        return rows

    async def lose_agent_sessions(self, conn: asyncpg.Connection, agent_id: str, reason: str) -> list[str]:
        """Draining an agent (in its transaction, after its commands were cancelled): its sessions are lost."""
        rows = await conn.fetch(QUERIES["lose_agent_sessions"], agent_id, reason)
        return [row["id"] for row in rows]

    async def lose_gone_agents_sessions(self, lost_after: float, limit: int) -> list[asyncpg.Record]:
        """Live sessions of agents gone longer than `lost_after` seconds are lost (with the reason)."""
        rows: list[asyncpg.Record] = await self.pool.fetch(QUERIES["lose_gone_agents_sessions"], lost_after, limit)
        for row in rows:
            log.warning("session_lost", session_id=row["id"], agent_id=row["agent_id"], lost_after=lost_after)
        return rows

    async def request_inventories(self, timeout_seconds: int, heartbeat_within: float) -> list[str]:
        rows = await self.pool.fetch(QUERIES["request_inventories"], timeout_seconds, heartbeat_within)
        return [row["agent_id"] for row in rows]
