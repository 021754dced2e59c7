"""Reconciliation (§4, §5): every agent's inventory, asked for periodically, compared with the sessions.

Every RECONCILE_INTERVAL one statement (sessions.sql `request_inventories`) inserts an
INVENTORY_SESSIONS command for each online agent that runs sessions and has none open; the trigger of
migration 0008 does the same whenever an agent that held sessions (re)connects. The agent answers
with what its platform holds; when that result is stored, the migration's trigger fails each session
believed running that the agent lacks (with the reason) and sends DELETE_SESSION for every workload
carrying our labels that no session owns. So nothing here reads results: the loop only asks.
The same round marks `lost` the live sessions of agents gone (no heartbeat) longer than
AGENT_LOST_AFTER, with the reason: their endpoints are dead and nothing would ever move them.
PostgreSQL away: logged once, retried with backoff, its return logged once; never a hot loop.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from streamspace_common.resilience import Outage, forever
from streamspace_common.sessions import SessionLifecycle
from streamspace_common.settings import STALE_AFTER_INTERVALS

from . import metrics

LOST_BATCH = 1000  # sessions marked lost per statement
INVENTORY_TIMEOUT = 120  # seconds from the agent's ack to its inventory before the command is retried
log = structlog.get_logger("dispatcher.reconcile")


class Reconciler:
    def __init__(
        self, pool: asyncpg.Pool, interval: float, heartbeat_interval: float, lost_after: float = 3600.0
    ) -> None:
        self.sessions = SessionLifecycle(pool)
        self.interval = interval
        self.lost_after = lost_after
        self.heartbeat_within = STALE_AFTER_INTERVALS * heartbeat_interval

    async def run(self) -> None:
        await forever(self.round, Outage("postgres_reconcile", log))

    async def round(self) -> None:
        await asyncio.sleep(self.interval)
        agents = await self.sessions.request_inventories(INVENTORY_TIMEOUT, self.heartbeat_within)
        metrics.INVENTORIES_REQUESTED.inc(len(agents))
        if agents:
            log.debug("inventories_requested", agents=len(agents))
        while len(lost := await self.sessions.lose_gone_agents_sessions(self.lost_after, LOST_BATCH)) == LOST_BATCH:
            metrics.SESSIONS_LOST.inc(len(lost))
        metrics.SESSIONS_LOST.inc(len(lost))
