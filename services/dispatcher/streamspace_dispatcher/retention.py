"""Retention (docs/operations.md "Data lifecycle"): old rows of the tables that grow forever are pruned.

One loop, three jobs, every PRUNE_INTERVAL:
- the audit trail (docs/security.md "Audit trail"): rows older than AUDIT_RETENTION_DAYS;
- finished commands (any status but pending, sent, acknowledged) created and last changed more than
  COMMAND_RETENTION_DAYS ago, with their attempts; a session that still exists keeps its newest command;
- finished inventories (INVENTORY_SESSIONS, one per agent per RECONCILE_INTERVAL) older than
  INVENTORY_RETENTION_HOURS, with their attempts; each agent keeps its newest completed one.

It runs beside the dispatcher's other periodic rounds (idle hibernation, reconciliation): the
dispatchers are the processes that already do slow, periodic work on the database, every replica may
run it at once (SKIP LOCKED), and it keeps the gateways, which serve requests, free of it. Each job
deletes the oldest expired rows `batch` at a time, each batch a transaction of its own (row locks on
at most `batch` rows for a few milliseconds, never a table lock), with a pause between batches and at
most `max_batches` per job and round: a large backlog (the first round after an upgrade, a long outage)
drains over several rounds instead of loading the database for hours at once. The audit transaction
first declares the retention to the database: the trigger of migration 0011 refuses a DELETE of any
row younger than that. PostgreSQL away: logged once, retried with backoff, its return logged once;
the loop never spins.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import structlog

from streamspace_common.db import load_queries
from streamspace_common.resilience import Outage, forever

from . import metrics

QUERIES = load_queries("streamspace_dispatcher", "retention.sql")
PRUNE_BATCH = 1000  # rows per transaction
PRUNE_MAX_BATCHES = 100  # batches per job and round: at most 100,000 rows of a table per round
PRUNE_PAUSE = 0.05  # seconds between batches: other transactions get the locks and the disk
log = structlog.get_logger("dispatcher.retention")


@dataclass(frozen=True)
class Job:
    table: str  # the metric's label
    query: str  # a query of retention.sql: ($1 retention, $2 batch) -> rows, attempts
    retention: int  # in the query's unit (days, hours)
    audit: bool = False  # declare the retention first (the audit trail's trigger)


class Retention:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        audit_days: int,
        command_days: int,
        inventory_hours: int,
        interval: float = 600.0,
        batch: int = PRUNE_BATCH,
        max_batches: int = PRUNE_MAX_BATCHES,
        pause: float = PRUNE_PAUSE,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.batch = batch
        self.max_batches = max_batches
        self.pause = pause
        self.audit = Job("audit_log", "prune_audit", audit_days, audit=True)
        self.commands = Job("agent_commands", "prune_commands", command_days)
        self.inventories = Job("inventories", "prune_inventories", inventory_hours)

    async def run(self) -> None:
        await forever(self.round, Outage("postgres_retention", log))

    async def round(self) -> None:
        await asyncio.sleep(self.interval)
        await self.prune_all()

    async def prune_all(self) -> None:
        for job in (self.audit, self.commands, self.inventories):
            rows, attempts = await self.prune(job)
            if rows:
                log.info("pruned", table=job.table, rows=rows, attempts=attempts, retention=job.retention)
        await self.measure_oldest()

    async def prune(self, job: Job) -> tuple[int, int]:
        """Delete `job`'s expired rows, `batch` per transaction, up to `max_batches`; (rows, attempts) gone."""
        rows = attempts = 0
        for n in range(self.max_batches):
            if n:
                await asyncio.sleep(self.pause)
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(QUERIES["no_jit"])
                if job.audit:
                    await conn.execute(QUERIES["declare_retention"], job.retention)
                gone = await conn.fetchrow(QUERIES[job.query], job.retention, self.batch)
            rows += gone["rows"]
            attempts += gone["attempts"]
            metrics.ROWS_PRUNED.labels(job.table).inc(gone["rows"])
            metrics.ROWS_PRUNED.labels("agent_command_attempts").inc(gone["attempts"])
            if job.audit:
                metrics.AUDIT_PRUNED.inc(gone["rows"])
            if gone["rows"] < self.batch:
                return rows, attempts
        log.warning("prune_backlog", table=job.table, rows=rows, batches=self.max_batches)
        return rows, attempts

    async def measure_oldest(self) -> None:
        """The age of the oldest audit row and finished command still stored: one index step each."""
        for table, query in (("audit_log", "oldest_audit"), ("agent_commands", "oldest_finished_command")):
            age: float | None = await self.pool.fetchval(QUERIES[query])
            metrics.OLDEST_RETAINED.labels(table).set(age or 0.0)


class AuditPruner:
    """The audit trail's job alone, drained to the end (tests/integration/test_audit.py)."""

    def __init__(self, pool: asyncpg.Pool, retention_days: int) -> None:
        self.pool = pool
        self.retention_days = retention_days

    async def prune(self, batch: int = PRUNE_BATCH) -> int:
        """Delete every row older than the retention, `batch` rows per transaction; how many went."""
        retention = Retention(
            self.pool,
            audit_days=self.retention_days,
            command_days=1,
            inventory_hours=1,
            batch=batch,
            max_batches=1 << 30,
            pause=0,
        )
        rows, _ = await retention.prune(retention.audit)
        return rows
