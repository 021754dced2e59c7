"""The gateway's PostgreSQL reads and writes, by named query."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import asyncpg
import structlog
from aiohttp import web

from streamspace_common.commands import CommandLifecycle
from streamspace_common.db import TRANSIENT_ERRORS, load_queries
from streamspace_common.keys import DISPATCH_CHANNEL, LEASE_CHANNEL, POD_CHANNEL_PREFIX
from streamspace_common.resilience import Outage, retry
from streamspace_common.schemas import Hello

QUERIES = load_queries("streamspace_gateway")
T = TypeVar("T")
log = structlog.get_logger("gateway.store")


class Store:
    def __init__(self, pool: asyncpg.Pool, pod: str) -> None:
        self.pool = pool
        self.pod = pod
        self.outage = Outage("postgres", log)
        self.commands = CommandLifecycle(pool)

    async def until_done(self, write: Callable[[], Awaitable[T]]) -> T:
        """Retry a write that must not be lost (a registration, a requeue, a batch of acks and results)
        through a PostgreSQL outage; only errors that say PostgreSQL is unavailable are retried."""
        return await retry(write, self.outage, TRANSIENT_ERRORS)

    async def agent_for_token(self, token_hash: str) -> asyncpg.Record | None:
        """The live token's row (agent_id, superseded_at, expires_at); None if unknown, revoked or expired."""
        row: asyncpg.Record | None = await self.pool.fetchrow(QUERIES["agent_for_token"], token_hash)
        return row

    async def revoked_tokens(self, token_hashes: set[str]) -> dict[str, bool]:
        """Those of these agent token hashes that are no longer live, each with whether it expired (else it
        was revoked, or is gone)."""
        if not token_hashes:
            return {}
        rows = await self.pool.fetch(QUERIES["revoked_tokens"], list(token_hashes))
        return {row["token_hash"]: row["expired"] for row in rows}

    async def registration_clock(self) -> datetime:
        """PostgreSQL's clock now: a non-HA socket's place in the order of its agent's registrations."""
        now: datetime = await self.pool.fetchval(QUERIES["registration_clock"])
        return now

    async def agent_online(self, hello: Hello, registered_at: datetime) -> datetime | None:
        """Marks the agent online on this replica, as the socket registered at `registered_at` (which
        identifies it); None, writing nothing, if a newer registration of the agent wrote the row already."""
        connected_at: datetime | None = await self.pool.fetchval(
            QUERIES["agent_online"],
            hello.agent_id,
            self.pod,
            hello.platform,
            hello.version,
            hello.capabilities,
            hello.concurrency,
            hello.instance_id,
            registered_at,
        )
        return connected_at

    async def agent_offline(self, agent_id: str, connected_at: datetime) -> None:
        """Offline, unless the agent has registered again since the socket registered at `connected_at`."""
        await self.pool.execute(QUERIES["agent_offline"], agent_id, self.pod, connected_at)

    async def pod_agents_offline(self) -> None:
        await self.pool.execute(QUERIES["pod_agents_offline"], self.pod)
        await self.pool.execute(QUERIES["pod_instances_gone"], self.pod)

    # --- HA: leases and instances ---------------------------------------------------------------

    async def acquire_lease(
        self, agent_id: str, instance_id: str, ttl: float, proof_hash: str | None, holder_hash: str | None
    ) -> tuple[int, datetime] | None:
        """The lease's epoch and the time it was taken (its registration's place in order: agent_online) if
        this socket holds it now (its holder secret's hash: `holder_hash`); None if another one does.
        `proof_hash`: the hash of the lease secret the socket presented, if any."""
        row = await self.pool.fetchrow(
            QUERIES["acquire_lease"], agent_id, instance_id, self.pod, ttl, proof_hash, holder_hash
        )
        return None if row is None else (int(row["epoch"]), row["taken_at"])

    async def lapsed_leases(self, agent_ids: list[str]) -> list[str]:
        if not agent_ids:
            return []
        return [row[0] for row in await self.pool.fetch(QUERIES["lapsed_leases"], agent_ids)]

    async def lease_epoch(self, agent_id: str) -> int:
        epoch: int | None = await self.pool.fetchval(QUERIES["lease_epoch"], agent_id)
        return epoch or 0

    async def renew_leases(
        self, agent_ids: list[str], instance_ids: list[str], epochs: list[int], ttl: float
    ) -> set[str]:
        """Extend the leases of these agents' (instance, epoch); the agent ids whose lease is lost."""
        if not agent_ids:
            return set()
        rows = await self.pool.fetch(QUERIES["renew_leases"], agent_ids, instance_ids, epochs, self.pod, ttl)
        return {row["agent_id"] for row in rows}

    async def leased_agents(self, agent_ids: list[str]) -> set[str]:
        """Those of these agents that have (or had) an HA lease: no hello without HA is accepted for them."""
        if not agent_ids:
            return set()
        return {row[0] for row in await self.pool.fetch(QUERIES["leased_agents"], agent_ids)}

    async def vacate_pod_leases(self) -> None:
        await self.pool.execute(QUERIES["vacate_pod_leases"], self.pod)

    async def vacate_lease(self, agent_id: str) -> None:
        await self.pool.execute(QUERIES["vacate_lease"], agent_id, self.pod)

    async def presence(self, seen_within: float) -> tuple[int, int]:
        """The live gateway replicas (their LISTEN connections) and the agents online on all of them or seen
        within `seen_within` seconds (on their way from one replica to another)."""
        row = await self.pool.fetchrow(QUERIES["presence"], POD_CHANNEL_PREFIX, seen_within)
        return (0, 0) if row is None else (int(row["replicas"]), int(row["agents"]))

    async def release_lease(self, agent_id: str, instance_id: str, epoch: int) -> None:
        await self.pool.execute(QUERIES["release_lease"], agent_id, instance_id, epoch, LEASE_CHANNEL, self.pod)

    async def instance_connected(self, agent_id: str, instance_id: str) -> None:
        await self.pool.execute(QUERIES["instance_connected"], agent_id, instance_id, self.pod)

    async def instance_gone(self, agent_id: str, instance_id: str) -> None:
        await self.pool.execute(QUERIES["instance_gone"], agent_id, instance_id, self.pod)

    async def touch_instances(self, agent_ids: list[str], instance_ids: list[str]) -> None:
        if agent_ids:
            await self.pool.execute(QUERIES["touch_instances"], agent_ids, instance_ids, self.pod)

    async def touch_heartbeats(self, agent_ids: list[str]) -> None:
        await self.pool.execute(QUERIES["touch_heartbeats"], agent_ids, self.pod)

    async def wake_dispatchers(self, agent_ids: list[str]) -> None:
        await self.pool.execute(QUERIES["wake_dispatchers"], agent_ids, DISPATCH_CHANNEL)


STORE_KEY = web.AppKey("store", Store)
