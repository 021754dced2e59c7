"""Agent rebalancing across gateway replicas (docs/operations.md "Scaling the gateways").

Agents connect to whichever of GATEWAY_URLS answers and stay there: after a scale-out, or after a rolling
restart, the new replicas would stay empty. Every REBALANCE_INTERVAL (jittered ±50 %, so replicas do not
act in step) a replica compares the agents it holds with its fair share: agents online on all replicas
(or seen within 3 heartbeat intervals: a mover in transit still counts) divided by the live replicas
(their LISTEN connections in pg_stat_activity, so a replica that just started counts while it holds
nobody). Above fair share x (1 + REBALANCE_TOLERANCE) (and 2 agents more) it asks some agents to move,
at most REBALANCE_BATCH per round, down to its fair share: each is closed with 4412 (MOVE) after its own
random delay within half an interval, so the moves trickle, never a herd.

The moving agent reconnects at once to another of its URLs with MOVING_HEADER; a replica at or above its
fair share refuses such a connect with 409 and the agent tries the next URL (after every URL refused it,
it connects without the header). So moved agents land only where there is room, and a replica that sheds
never takes a mover back: no ping-pong.

Commands are not lost while an agent moves (the path of a 1012): its lease is vacated rather than released
(the same process takes it back, epoch and work in flight unchanged, on the replica it lands on); a delivery
that reaches this replica after the close is given back and claimed again (pod_channel.py); a command sent
but never acknowledged is requeued by the agent's next hello (inventory) or the ack deadline; results the
agent held unconfirmed it sends again on its next socket.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass

import structlog
from aiohttp import web

from streamspace_common import closecodes
from streamspace_common.db import TRANSIENT_ERRORS
from streamspace_common.resilience import Outage, forever

from . import metrics
from .connection import AgentConnection
from .registry import AgentRegistry

log = structlog.get_logger("gateway.rebalance")
MIN_SLACK = 2  # agents above fair share a replica may hold before it sheds any (small fleets)


@dataclass(frozen=True)
class Share:
    replicas: int
    agents: int  # online on every replica

    @property
    def fair(self) -> int:
        return math.ceil(self.agents / self.replicas) if self.replicas else 0

    def surplus(self, held: int, tolerance: float, batch: int) -> int:
        """How many of `held` agents to ask to move this round: none within the hysteresis band."""
        if self.replicas < 2 or held <= self.fair + max(MIN_SLACK, math.ceil(self.fair * tolerance)):
            return 0
        return min(held - self.fair, batch)

    def has_room(self, held: int) -> bool:
        return self.replicas < 2 or held < self.fair


class Rebalancer:
    def __init__(self, registry: AgentRegistry, interval: float, tolerance: float, batch: int) -> None:
        self.registry = registry
        self.interval = interval
        self.tolerance = tolerance
        self.batch = batch
        self.share = Share(replicas=0, agents=0)  # as last read; 0 replicas: unknown, every mover is taken
        self.outage = Outage("postgres", log)

    def held(self) -> int:
        return sum(not conn.ws.closed and not conn.moving for conn in self.registry.connections.values())

    def takes_mover(self) -> bool:
        """A connect with MOVING_HEADER: taken only below the fair share (the live count, not last round's)."""
        return self.share.has_room(self.held())

    async def run(self) -> None:
        if self.interval <= 0:
            return

        async def one_round() -> None:  # a round first: a replica just started knows its share for movers
            try:
                await self.once()
                self.outage.recovered()
            except TRANSIENT_ERRORS as exc:
                self.outage.failed(exc)
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.5))  # noqa: S311 (jitter, not a secret)

        await forever(one_round, Outage("rebalance", log))

    async def once(self) -> list[str]:
        """Read the fair share; ask the agents above it to move (in the background, each after its delay)."""
        replicas, agents = await self.registry.store.presence.count(self.registry.mapping_ttl)
        self.share = Share(replicas=replicas, agents=agents)
        held = self.held()
        metrics.FAIR_SHARE.set(self.share.fair)
        surplus = 0 if self.registry.closing else self.share.surplus(held, self.tolerance, self.batch)
        if surplus <= 0:
            return []
        movable = [conn for conn in self.registry.connections.values() if self.movable(conn)]
        chosen = random.sample(movable, min(surplus, len(movable)))
        if not chosen:
            return []
        log.info("rebalancing", held=held, fair=self.share.fair, replicas=replicas, agents=agents, moving=len(chosen))
        for conn in chosen:
            conn.moving = True
            self.registry.in_background(self.move(conn, random.uniform(0, self.interval / 2)))  # noqa: S311
        return [conn.agent_id for conn in chosen]

    @staticmethod
    def movable(conn: AgentConnection) -> bool:
        """Open, not moving, and registered to the end (its agents row written): one still registering, moved
        away, could write its row after the agent registered on another replica, which leaves the agent
        `offline` there once this socket closes (seen at 5,000 agents on the loaded box)."""
        return not conn.ws.closed and not conn.moving and conn.registered_at is not None

    async def move(self, conn: AgentConnection, delay: float) -> None:
        await asyncio.sleep(delay)
        if conn.ws.closed or self.registry.connections.get(conn.agent_id) is not conn:
            return
        if conn.ha:
            await self.registry.store.until_done(lambda: self.registry.store.leases.vacate(conn.agent_id))
        metrics.AGENTS_MOVED.inc()
        log.info("agent_asked_to_move", agent_id=conn.agent_id, instance_id=conn.instance_id)
        await conn.ws.close(code=closecodes.MOVE, message=b"rebalancing: reconnect to another gateway")


REBALANCER_KEY = web.AppKey("rebalancer", Rebalancer)
