"""The command lifecycle (§2): its states, the moves allowed between them, and every statement that makes one.

    pending -> sent -> acknowledged -> completed | failed      (plus cancelled, and back to pending to retry)

Every move is a guarded UPDATE (`WHERE status = <expected>`), so a late or duplicate message can never
move a row backwards; the database refuses any other move (migration 0003, whose table of allowed moves
is TRANSITIONS below). Each method returns what it moved; a move that matched no row is logged, never
silently dropped.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from .db import load_queries
from .schemas import CommandStatus, Result

QUERIES = load_queries("streamspace_common", "commands.sql")
OPEN_STATUSES: tuple[CommandStatus, ...] = ("pending", "sent", "acknowledged")
FINAL_STATUSES: tuple[CommandStatus, ...] = ("completed", "failed", "cancelled")
TRANSITIONS: dict[CommandStatus, frozenset[CommandStatus]] = {
    "pending": frozenset({"sent", "cancelled", "failed"}),
    "sent": frozenset({"pending", "acknowledged", "completed", "failed", "cancelled"}),
    "acknowledged": frozenset({"pending", "completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
log = structlog.get_logger("commands")


class CommandLifecycle:
    """The moves of agent_commands rows, run on a pool (or one connection, inside a transaction)."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self.db = db

    async def claim(
        self, agent_ids: list[str], limit: int, ack_timeout: float, dispatcher: str
    ) -> list[asyncpg.Record]:
        """pending -> sent for up to `limit` due commands of these agents; the rows to publish."""
        rows: list[asyncpg.Record] = await self.db.fetch(QUERIES["claim"], agent_ids, limit, ack_timeout, dispatcher)
        return rows

    async def requeue_sent(self, command_ids: list[str], attempts: list[int]) -> int:
        """sent -> pending, attempt refunded, for claims that never reached their agent."""
        if not command_ids:
            return 0
        moved = await self.db.fetch(QUERIES["requeue_sent"], command_ids, attempts)
        _log_unmoved("requeue_sent", len(command_ids) - len(moved))
        return len(moved)

    async def acknowledge(self, agent_id: str, command_id: str, pod: str) -> bool:
        """sent -> acknowledged."""
        moved = await self.db.fetchval(QUERIES["acknowledge"], command_id, agent_id, pod) is not None
        if not moved:
            _log_unmoved("acknowledge", 1, command_id=command_id, agent_id=agent_id)
        return moved

    async def finish(self, agent_id: str, result: Result, pod: str) -> bool:
        """sent | acknowledged -> completed | failed, with the agent's result or error."""
        args: list[Any] = [result.command_id, agent_id, result.status, result.result, result.error, pod]
        moved = await self.db.fetchval(QUERIES["finish"], *args) is not None
        if not moved:
            _log_unmoved("finish", 1, command_id=result.command_id, agent_id=agent_id)
        return moved

    async def expire_unacknowledged(self, backoff_cap: float) -> list[asyncpg.Record]:
        """sent past its ack deadline -> pending (with backoff) or failed (attempts spent)."""
        rows: list[asyncpg.Record] = await self.db.fetch(QUERIES["expire_unacknowledged"], backoff_cap)
        return rows


def _log_unmoved(move: str, count: int, **context: str) -> None:
    """A guarded move that matched nothing: a late, duplicate or foreign message (harmless, but visible)."""
    if count > 0:
        log.info("transition_not_applied", move=move, rows=count, **context)
