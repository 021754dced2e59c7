"""HA agents in PostgreSQL: the lease that makes one instance of an agent active (its epoch rises with
every change of holder), and the instances connected to this replica. registry.py decides when to take,
renew, release or vacate one; this module only reads and writes them."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from streamspace_common.db import load_queries
from streamspace_common.keys import LEASE_CHANNEL

QUERIES = load_queries("streamspace_gateway", "leases.sql")


class Leases:
    def __init__(self, pool: asyncpg.Pool, pod: str) -> None:
        self.pool = pool
        self.pod = pod

    async def acquire(
        self, agent_id: str, instance_id: str, ttl: float, proof_hash: str | None, holder_hash: str | None
    ) -> tuple[int, datetime] | None:
        """The lease's epoch and the time it was taken (its registration's place in order: agent_online) if
        this socket holds it now (its holder secret's hash: `holder_hash`); None if another one does.
        `proof_hash`: the hash of the lease secret the socket presented, if any."""
        row = await self.pool.fetchrow(
            QUERIES["acquire_lease"], agent_id, instance_id, self.pod, ttl, proof_hash, holder_hash
        )
        return None if row is None else (int(row["epoch"]), row["taken_at"])

    async def lapsed(self, agent_ids: list[str]) -> list[str]:
        if not agent_ids:
            return []
        return [row[0] for row in await self.pool.fetch(QUERIES["lapsed_leases"], agent_ids)]

    async def epoch(self, agent_id: str) -> int:
        epoch: int | None = await self.pool.fetchval(QUERIES["lease_epoch"], agent_id)
        return epoch or 0

    async def renew(self, agent_ids: list[str], instance_ids: list[str], epochs: list[int], ttl: float) -> set[str]:
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

    async def vacate_pod(self) -> None:
        await self.pool.execute(QUERIES["vacate_pod_leases"], self.pod)

    async def vacate(self, agent_id: str) -> None:
        await self.pool.execute(QUERIES["vacate_lease"], agent_id, self.pod)

    async def release(self, agent_id: str, instance_id: str, epoch: int) -> None:
        await self.pool.execute(QUERIES["release_lease"], agent_id, instance_id, epoch, LEASE_CHANNEL, self.pod)

    async def instance_connected(self, agent_id: str, instance_id: str) -> None:
        await self.pool.execute(QUERIES["instance_connected"], agent_id, instance_id, self.pod)

    async def instance_gone(self, agent_id: str, instance_id: str) -> None:
        await self.pool.execute(QUERIES["instance_gone"], agent_id, instance_id, self.pod)

    async def touch_instances(self, agent_ids: list[str], instance_ids: list[str]) -> None:
        if agent_ids:
            await self.pool.execute(QUERIES["touch_instances"], agent_ids, instance_ids, self.pod)

    async def pod_instances_gone(self) -> None:
        await self.pool.execute(QUERIES["pod_instances_gone"], self.pod)
