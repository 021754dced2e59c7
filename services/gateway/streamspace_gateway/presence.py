"""Which agents are online on which replica: the agents rows this replica's sockets write (registration,
heartbeats, leaving) and the count of replicas and agents the rebalancer reads."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from streamspace_common.db import load_queries
from streamspace_common.keys import DISPATCH_CHANNEL, POD_CHANNEL_PREFIX
from streamspace_common.schemas import Hello

QUERIES = load_queries("streamspace_gateway", "presence.sql")


class Presence:
    def __init__(self, pool: asyncpg.Pool, pod: str) -> None:
        self.pool = pool
        self.pod = pod

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

    async def touch_heartbeats(self, agent_ids: list[str]) -> None:
        await self.pool.execute(QUERIES["touch_heartbeats"], agent_ids, self.pod)

    async def wake_dispatchers(self, agent_ids: list[str]) -> None:
        await self.pool.execute(QUERIES["wake_dispatchers"], agent_ids, DISPATCH_CHANNEL)

    async def count(self, seen_within: float) -> tuple[int, int]:
        """The live gateway replicas (their LISTEN connections) and the agents online on all of them or seen
        within `seen_within` seconds (on their way from one replica to another)."""
        row = await self.pool.fetchrow(QUERIES["presence"], POD_CHANNEL_PREFIX, seen_within)
        return (0, 0) if row is None else (int(row["replicas"]), int(row["agents"]))
