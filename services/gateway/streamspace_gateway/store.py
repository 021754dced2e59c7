"""The gateway's PostgreSQL side, one part per concept: agent tokens (agent_tokens.py), presence
(presence.py), HA leases (leases.py) and the command lifecycle (streamspace_common.commands); and
`until_done`, the retry every write that must not be lost goes through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog
from aiohttp import web

from streamspace_common.commands import CommandLifecycle
from streamspace_common.db import TRANSIENT_ERRORS
from streamspace_common.resilience import Outage, retry

from .agent_tokens import AgentTokens
from .leases import Leases
from .presence import Presence

T = TypeVar("T")
log = structlog.get_logger("gateway.store")


class Store:
    def __init__(self, pool: asyncpg.Pool, pod: str) -> None:
        self.pool = pool
        self.pod = pod
        self.outage = Outage("postgres", log)
        self.tokens = AgentTokens(pool)
        self.presence = Presence(pool, pod)
        self.leases = Leases(pool, pod)
        self.commands = CommandLifecycle(pool)

    async def until_done(self, write: Callable[[], Awaitable[T]]) -> T:
        """Retry a write that must not be lost (a registration, a requeue, a batch of acks and results)
        through a PostgreSQL outage; only errors that say PostgreSQL is unavailable are retried."""
        return await retry(write, self.outage, TRANSIENT_ERRORS)

    async def pod_gone(self) -> None:
        """At start-up and shutdown: this replica holds no sockets, whatever the tables say."""
        await self.presence.pod_agents_offline()
        await self.leases.pod_instances_gone()


STORE_KEY = web.AppKey("store", Store)
