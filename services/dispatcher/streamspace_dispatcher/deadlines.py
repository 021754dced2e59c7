"""Deadlines: commands past their ack or completion deadline wait for a retry or fail, pending ones past
their expiry end `expired` (§2 step 6); the same loop refreshes the open-commands gauges. A loop of its
own beside the claimer, so a slow claim never delays a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import structlog

from streamspace_common.commands import OPEN_STATUSES, CommandLifecycle
from streamspace_common.db import load_queries
from streamspace_common.resilience import Outage, forever

from . import metrics

BACKLOG_TOP_AGENTS = 10  # agents in the backlog gauge (its only label is agent_id: kept few)
QUERIES = load_queries("streamspace_dispatcher")
log = structlog.get_logger("dispatcher")


class Deadlines:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval: float,
        command_timeout: float,
        batch_size: int,
        count_interval: float,
        on_pending_again: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.commands = CommandLifecycle(pool)
        self.interval = interval
        self.command_timeout = command_timeout
        self.batch_size = batch_size
        self.count_interval = count_interval
        self.on_pending_again = on_pending_again  # the retry scheduler looks: some wait for a retry now
        self.counted_at = 0.0  # monotonic time of the last commands-by-status count

    async def run(self) -> None:
        await forever(self.round, Outage("expiry", log))

    async def round(self) -> None:
        await asyncio.sleep(self.interval)
        rows = await self.commands.expire_deadlines(self.command_timeout)
        for row in rows:
            deadline = "ack" if row["was"] == "sent" else "completion"
            log.info(
                "deadline_passed",
                deadline=deadline,
                command_id=row["command_id"],
                agent_id=row["agent_id"],
                status=row["status"],
                attempts=row["attempts"],
            )
            metrics.DEADLINES_PASSED.labels(deadline, row["status"]).inc()
        if any(row["status"] == "pending" for row in rows):
            self.on_pending_again()
        await self.expire_pending()
        await self.count_open_commands()

    async def expire_pending(self) -> None:
        """Pending commands past their expires_at end `expired`, a batch at a time, instead of waiting for
        their agent forever."""
        while True:
            rows = await self.commands.expire_pending(self.batch_size)
            for row in rows:
                log.info(
                    "command_expired", command_id=row["command_id"], agent_id=row["agent_id"], attempts=row["attempts"]
                )
            metrics.COMMANDS_EXPIRED.inc(len(rows))
            if len(rows) < self.batch_size:
                return

    async def count_open_commands(self) -> None:
        """The commands-by-status gauge, at most once per count interval (the sweep interval)."""
        if time.monotonic() < self.counted_at + self.count_interval:
            return
        self.counted_at = time.monotonic()
        counts = {status: (0, 0.0) for status in OPEN_STATUSES}
        rows = await self.pool.fetch(QUERIES["open_commands_by_status"])
        counts.update({row["status"]: (row["count"], max(0.0, row["oldest"])) for row in rows})
        for status, (count, oldest) in counts.items():
            metrics.COMMANDS_OPEN.labels(status).set(count)
            metrics.COMMANDS_OLDEST.labels(status).set(oldest)
        top = await self.pool.fetch(QUERIES["pending_backlog_top"], BACKLOG_TOP_AGENTS)
        metrics.BACKLOG_TOP.clear()  # at most BACKLOG_TOP_AGENTS series at any time
        for row in top:
            metrics.BACKLOG_TOP.labels(row["agent_id"]).set(row["count"])
