"""The audit trail's retention (docs/security.md "Audit trail"): rows older than AUDIT_RETENTION_DAYS go.

It runs beside the dispatcher's other periodic rounds (idle hibernation, reconciliation): the
dispatchers are the processes that already do slow, periodic work on the database, every replica may
run it at once (SKIP LOCKED), and it keeps the gateways, which serve requests, free of it. Every
PRUNE_INTERVAL it deletes the oldest expired rows PRUNE_BATCH at a time, each batch a transaction of its
own (short locks; a large backlog after a long outage drains over several batches). The transaction
first declares the retention to the database: the trigger of migration 0011 refuses a DELETE of any
row younger than that, and every DELETE in a transaction that has not declared one. PostgreSQL away:
logged once, retried with backoff; the loop never spins.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from streamspace_common.db import load_queries
from streamspace_common.resilience import Outage, forever

from . import metrics

QUERIES = load_queries("streamspace_dispatcher", "retention.sql")
PRUNE_INTERVAL = 600.0  # seconds between rounds
PRUNE_BATCH = 1000  # rows per transaction
log = structlog.get_logger("dispatcher.retention")


class AuditPruner:
    def __init__(self, pool: asyncpg.Pool, retention_days: int, interval: float = PRUNE_INTERVAL) -> None:
        self.pool = pool
        self.retention_days = retention_days
        self.interval = interval

    async def run(self) -> None:
        await forever(self.round, Outage("postgres_audit_retention", log))

    async def round(self) -> None:
        await asyncio.sleep(self.interval)
        pruned = await self.prune()
        if pruned:
            log.info("audit_pruned", rows=pruned, retention_days=self.retention_days)

    async def prune(self, batch: int = PRUNE_BATCH) -> int:
        """Delete every row older than the retention, `batch` rows per transaction; how many went."""
        total = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(QUERIES["declare_retention"], self.retention_days)
                gone: int = await conn.fetchval(QUERIES["prune_audit"], self.retention_days, batch)
            total += gone
            metrics.AUDIT_PRUNED.inc(gone)
            if gone < batch:
                return total
