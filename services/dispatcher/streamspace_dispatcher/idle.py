"""Auto-hibernation (§5): a running session idle past its template's idle timeout is hibernated.

Every IDLE_CHECK_INTERVAL one statement (sessions.sql `hibernate_idle`) finds running sessions whose
last activity (POST /sessions/{id}/activity, or becoming running) is older than their idle timeout and
that have no command in flight, sets their desired state to hibernated and inserts their
HIBERNATE_SESSION commands; the agent's report then moves the session (migration 0008). SKIP LOCKED
lets dispatcher replicas run it at the same time. Each round also refreshes the sessions-by-state gauge
(one COUNT ... GROUP BY). PostgreSQL away: logged once, retried with backoff,
its return logged once; the loop never spins (it sleeps an interval before every round).
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from streamspace_common.resilience import Outage, forever
from streamspace_common.sessions import SessionLifecycle

from . import metrics

IDLE_BATCH = 500  # sessions hibernated per round at most; the next round takes the rest
log = structlog.get_logger("dispatcher.idle")


class IdleHibernator:
    def __init__(self, pool: asyncpg.Pool, interval: float) -> None:
        self.sessions = SessionLifecycle(pool)
        self.interval = interval

    async def run(self) -> None:
        await forever(self.round, Outage("postgres_idle", log))

    async def round(self) -> None:
        await asyncio.sleep(self.interval)
        while len(hibernated := await self.sessions.hibernate_idle(IDLE_BATCH)) == IDLE_BATCH:
            metrics.SESSIONS_IDLE_HIBERNATED.inc(len(hibernated))
        for state, count in (await self.sessions.count_by_state()).items():
            metrics.SESSIONS.labels(state).set(count)
        metrics.SESSIONS_IDLE_HIBERNATED.inc(len(hibernated))
        for state, count in (await self.sessions.count_by_state()).items():
            metrics.SESSIONS.labels(state).set(count)
