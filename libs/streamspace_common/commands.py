"""The command lifecycle (§2): its states, the moves allowed between them, and every statement that makes one.

    pending -> sent -> acknowledged -> completed | failed      (plus cancelled, and back to pending to retry)
    pending -> expired                                         (still pending at its expires_at)

Every move is a guarded UPDATE (`WHERE status = <expected>`), so a late or duplicate message can never
move a row backwards; the database refuses any other move (migration 0003, whose table of allowed moves
is TRANSITIONS below). Each method returns what it moved; a move that matched no row is logged, never
silently dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import structlog

from .db import load_queries
from .schemas import CommandStatus, Result

QUERIES = load_queries("streamspace_common", "commands.sql")
OPEN_STATUSES: tuple[CommandStatus, ...] = ("pending", "sent", "acknowledged")
FINAL_STATUSES: tuple[CommandStatus, ...] = ("completed", "failed", "cancelled", "expired")
TRANSITIONS: dict[CommandStatus, frozenset[CommandStatus]] = {
    "pending": frozenset({"sent", "cancelled", "failed", "expired"}),
    "sent": frozenset({"pending", "acknowledged", "completed", "failed", "cancelled"}),
    "acknowledged": frozenset({"pending", "completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
    "expired": frozenset(),
}
log = structlog.get_logger("commands")
_json = msgspec.json.Encoder()


class CommandLifecycle:
    """The moves of agent_commands rows, run on a pool (or one connection, inside a transaction)."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self.db = db

    async def claim(
        self, agent_ids: list[str], limit: int, ack_timeout: float, dispatcher: str, window: int
    ) -> list[asyncpg.Record]:
        """pending -> sent for up to `limit` due commands of these agents, none beyond `window` sent and
        unacknowledged per agent; the rows to publish."""
        rows: list[asyncpg.Record] = await self.db.fetch(
            QUERIES["claim"], agent_ids, limit, ack_timeout, dispatcher, window
        )
        return rows

    async def requeue_sent(self, command_ids: list[str], attempts: list[int]) -> int:
        """sent -> pending, attempt refunded, for claims that never reached their agent."""
        if not command_ids:
            return 0
        moved = await self.db.fetch(QUERIES["requeue_sent"], command_ids, attempts)
        _log_unmoved("requeue_sent", len(command_ids) - len(moved))
        return len(moved)

    async def record_frames(
        self, acks: list[tuple[str, str, int | None]], results: list[tuple[str, int | None, Result]], pod: str
    ) -> tuple[list[str], dict[str, CommandStatus]]:
        """In one statement: sent -> acknowledged for (command_id, agent_id, socket epoch) acks, and
        sent | acknowledged -> completed | failed (or pending: a retryable failure with attempts left) for
        (agent_id, socket epoch, result) results. A socket epoch that is not the agent's lease epoch now
        (a demoted HA replica, a standby) moves nothing, nor does a missing epoch (None: a socket without
        HA) for an agent that has a lease. Returns the acks it applied and the results it applied, with
        the status each got. One frame per command: the caller drops an ack whose result it also has."""
        if not acks and not results:
            return [], {}
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        for command_id, agent_id, epoch in acks:
            for column, value in zip(columns, (command_id, agent_id, epoch, None, None, None, None), strict=True):
                column.append(value)
        for agent_id, epoch, result in results:
            encoded = None if result.result is None else _json.encode(result.result).decode()
            values = (result.command_id, agent_id, epoch, result.status, encoded, result.error, result.retryable)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        rows = await self.db.fetch(QUERIES["record_frames"], *columns, pod)
        acked = [row["command_id"] for row in rows if row["is_ack"]]
        finished: dict[str, CommandStatus] = {row["command_id"]: row["status"] for row in rows if not row["is_ack"]}
        _log_unmoved("acknowledge", len(acks) - len(acked))
        _log_unmoved("finish", len(results) - len(finished))
        return acked, finished

    async def requeue_unseen(self, agent_id: str, registered_at: datetime, known: list[str]) -> list[asyncpg.Record]:
        """sent | acknowledged -> pending (or failed, attempts spent) for the agent's commands claimed
        before `registered_at` that it does not know (`known`: running or holding a result)."""
        rows: list[asyncpg.Record] = await self.db.fetch(QUERIES["requeue_unseen"], agent_id, registered_at, known)
        return rows

    async def expire_deadlines(self, command_timeout: float) -> list[asyncpg.Record]:
        """sent past its ack deadline, or acknowledged past its completion deadline (timeout_seconds, else
        `command_timeout`) -> pending (after the backoff) or failed (attempts spent). `was`: the old status."""
        rows: list[asyncpg.Record] = await self.db.fetch(QUERIES["expire_deadlines"], command_timeout)
        return rows

    async def requeue_other_epochs(self, agent_id: str, epoch: int) -> list[asyncpg.Record]:
        """sent | acknowledged -> pending (or failed, attempts spent) for the agent's commands claimed under
        another lease epoch than `epoch`, the one its new active replica holds."""
        rows: list[asyncpg.Record] = await self.db.fetch(QUERIES["requeue_other_epochs"], agent_id, epoch)
        return rows

    async def cancel(self, command_id: str, reason: str) -> asyncpg.Record | None:
        """pending | sent | acknowledged -> cancelled; None if the command is not open (or not there). A
        command that was sent or acknowledged to an agent that runs CANCEL_COMMAND gets one (`cancel_id`):
        it reaches the agent through the delivery path, signed like any delivery, and stops the handler."""
        row: asyncpg.Record | None = await self.db.fetchrow(QUERIES["cancel"], command_id, reason)
        return row

    async def cancel_for_agent(self, agent_id: str, reason: str) -> list[str]:
        """Every open command of an agent that is being drained -> cancelled, with `reason`."""
        rows = await self.db.fetch(QUERIES["cancel_for_agent"], agent_id, reason)
        return [row["command_id"] for row in rows]

    async def expire_pending(self, limit: int) -> list[asyncpg.Record]:
        """pending past its expires_at -> expired, up to `limit` rows (SKIP LOCKED: replicas share it)."""
        rows: list[asyncpg.Record] = await self.db.fetch(QUERIES["expire_pending"], limit)
        return rows


def _log_unmoved(move: str, count: int, **context: str) -> None:
    """A guarded move that matched nothing: a late, duplicate or foreign message (harmless, but visible)."""
    if count > 0:
        log.info("transition_not_applied", move=move, rows=count, **context)
