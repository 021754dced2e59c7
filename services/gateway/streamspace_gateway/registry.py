"""AgentRegistry: the agent sockets connected to this replica, their HA leases, and their routing entries
in Redis (§3).

It writes `agent:{id}:pod` when an agent registers (upkeep.py refreshes the mappings of live sockets every
heartbeat interval, so a crashed replica's mappings expire by themselves); pod_channel.py receives this
pod's deliveries and forwards each to the socket the registry names active.

HA agents (hello feature "ha"): several replicas (instances) of one agent id may be connected, here or
on other gateways. The instance holding the agent's lease in PostgreSQL is active: it alone is in
`connections`, owns the routing entries and receives commands; the others wait in `standbys` with their
sockets open. Nobody kicks anybody: a lease changes hands only when it is released (its socket closed
or went stale) or lapsed (its gateway stopped renewing it), and its epoch rises each time. Acks and
results carry their socket's epoch into the writer's statements, so a demoted replica's are refused.
An agent without the feature keeps the earlier rule: its newest socket replaces the older one.

Fencing (§10: an agent is a token plus the lease the server names): the lease is bound to the socket
that holds it, not to the instance id a client sends. The socket that takes it gets a random secret in
its role frame (agents with the "fence" feature; the lease keeps its hash) and presents it on its next
connect: only that proof takes the lease of a live holder over, here (the old socket is replaced) or
through another replica. Without it, a second socket naming an instance that has a live socket here is
refused (4411), and on another replica it can only stand by (acquire_lease takes a lease of the same
instance only with the proof, through the replica that holds it, or one that vacated it on shutdown).
A hello without the feature for an agent id that has a lease is refused (4426) before its welcome, so
a leaked token can never replace, silence or mark offline an active instance; a socket that was never
registered changes nothing when it leaves. Every forward (pod_channel.py) carries the active socket's
epoch and a delivery claimed under another epoch is given back, not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import datetime
from functools import partial
from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from streamspace_common import closecodes
from streamspace_common.db import TRANSIENT_ERRORS
from streamspace_common.resilience import Outage
from streamspace_common.routing import RoutingTable
from streamspace_common.schemas import FEATURE_INVENTORY, Role
from streamspace_common.settings import STALE_AFTER_INTERVALS
from streamspace_common.tokens import hash_token, new_token

from . import metrics
from .connection import AgentConnection, Refused
from .store import Store
from .writer import FrameWriter

log = structlog.get_logger("gateway.registry")
DRAIN_TIMEOUT = 5.0  # seconds a stopping replica waits for queued acks and results to be written


class AgentRegistry:
    def __init__(self, pod: str, routing: RoutingTable, store: Store, heartbeat_interval: float) -> None:
        self.pod = pod
        self.routing = routing
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.mapping_ttl = max(1, round(STALE_AFTER_INTERVALS * heartbeat_interval))
        self.connections: dict[str, AgentConnection] = {}  # the active socket of each agent held here
        self.standbys: dict[str, dict[str, AgentConnection]] = {}  # HA agent -> instance -> standby socket
        self.subscribed = False  # this pod's Redis channel is held (pod_channel.py): mappings written now route
        self.closing = False
        self.redis_outage = Outage("redis", log)
        self.writer = FrameWriter(store.pool, pod)
        self._background: set[asyncio.Task[None]] = set()
        self._promoting: set[str] = set()  # agents whose standbys here are trying to take the lease

    # --- sockets ---------------------------------------------------------------------------

    async def admit(self, conn: AgentConnection) -> None:
        """Refuse, before its welcome, a socket that must not register: one without HA for an agent run with
        HA leases (it would replace the active instance), or a second socket of an instance live here."""
        if conn.ha:
            self.check_instance(conn)
            return
        if await self.store.until_done(partial(self.store.leases.leased_agents, [conn.agent_id])):
            raise Refused(closecodes.HA_REQUIRED, "this agent runs with HA leases: a hello without ha is refused")

    def check_instance(self, conn: AgentConnection) -> None:
        """A live socket of the same instance here is replaced only by one proving it holds its lease."""
        same = self.local_instance(conn.agent_id, conn.instance_id)
        if same is None or same is conn or same.ws.closed:
            return
        if same.lease_hash is not None and same.lease_hash == conn.proof_hash:
            return
        raise Refused(closecodes.INSTANCE_CONNECTED, "this instance id already has a live socket here")

    def local_instance(self, agent_id: str, instance_id: str) -> AgentConnection | None:
        active = self.connections.get(agent_id)
        if active is not None and active.ha and active.instance_id == instance_id:
            return active
        return self.standbys.get(agent_id, {}).get(instance_id)

    def is_active(self, conn: AgentConnection) -> bool:
        return self.connections.get(conn.agent_id) is conn

    async def register(self, conn: AgentConnection) -> None:
        await self.admit(conn)  # again: another socket may have registered while this one said hello
        conn.registered = True
        if conn.ha:
            await self.register_instance(conn)
            return
        previous = self.connections.get(conn.agent_id)
        if previous is not None:
            await previous.ws.close(code=closecodes.REPLACED, message=b"replaced by a newer connection")
        await self.activate(conn, await self.store.until_done(self.store.presence.registration_clock))

    async def activate(self, conn: AgentConnection, since: datetime) -> bool:
        """Make `conn` the agent's socket on this replica: routing entries, agents row, hello requeue.
        `since`: its place in the order of the agent's registrations (PostgreSQL's clock when it began to
        register, or took the lease). False if a newer one wrote the agents row first: it is closed."""
        self.connections[conn.agent_id] = conn
        metrics.AGENTS_CONNECTED.set(len(self.connections))
        metrics.AGENT_CONNECTIONS.inc()
        if self.subscribed:  # otherwise the subscription loop writes it once Redis is back
            try:
                await self.routing.register(conn.agent_id, self.pod, self.mapping_ttl)
            except RedisError as exc:
                self.redis_outage.failed(exc)
        conn.registered_at = await self.store.until_done(partial(self.store.presence.agent_online, conn.hello, since))
        if conn.registered_at is None:
            await self.superseded(conn)
            return False
        if FEATURE_INVENTORY in conn.hello.features:
            self.in_background(self.requeue_unseen(conn, conn.registered_at))
        return True

    async def superseded(self, conn: AgentConnection) -> None:
        """Its registration's row write came after a newer socket's (elsewhere, or here): that one's row
        stands. Closed, its leaving (unregister) removes the mapping it wrote and marks nothing offline."""
        log.warning("agent_registration_superseded", agent_id=conn.agent_id, instance_id=conn.instance_id)
        await conn.ws.close(code=closecodes.REPLACED, message=b"a newer connection of this agent registered")

    async def routable_again(self) -> None:
        """This pod's Redis channel is held again (pod_channel.py): re-write every local mapping, which may
        have gone with Redis, and wake the dispatchers for those agents."""
        # Set before the snapshot below: an agent registering from here on writes its own mapping.
        self.subscribed = True
        await self.routing.refresh(list(self.connections), self.pod, self.mapping_ttl)
        self.redis_outage.recovered()
        if self.connections:  # their mappings may have gone with Redis: they are routable again
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self.store.presence.wake_dispatchers(list(self.connections))

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- HA instances ------------------------------------------------------------------------

    async def register_instance(self, conn: AgentConnection) -> None:
        """An HA replica (admitted: no live socket of its instance here, or it proved it is that socket's
        process, which it replaces): it takes the lease if it is free, or stands by."""
        same = self.local_instance(conn.agent_id, conn.instance_id)
        if same is not None:
            self.forget(same)
            if not same.ws.closed:
                await same.ws.close(code=closecodes.REPLACED, message=b"replaced by a newer connection")
        conn.epoch = 0
        await self.store.until_done(partial(self.store.leases.instance_connected, conn.agent_id, conn.instance_id))
        if not await self.take_lease(conn) and not conn.ws.closed:
            self.standbys.setdefault(conn.agent_id, {})[conn.instance_id] = conn
            epoch = await self.store.until_done(partial(self.store.leases.epoch, conn.agent_id))
            conn.send_later(Role(role="standby", epoch=epoch))

    async def take_lease(self, conn: AgentConnection) -> bool:
        """Become the active replica if the lease is free (or already ours); redeliver the old epoch's work.
        The holder is named by a new secret (agents with "fence"): the role frame carries it, the lease its hash."""
        secret = new_token() if conn.fences else None
        holder_hash = None if secret is None else hash_token(secret)
        acquire = partial(
            self.store.leases.acquire, conn.agent_id, conn.instance_id, self.mapping_ttl, conn.proof_hash, holder_hash
        )
        taken = await self.store.until_done(acquire)
        if taken is None or conn.ws.closed:
            return False
        epoch, taken_at = taken
        promoted = conn.epoch != epoch and epoch > 1
        conn.epoch = epoch
        conn.lease_hash = holder_hash
        self.standbys.get(conn.agent_id, {}).pop(conn.instance_id, None)
        previous = self.connections.get(conn.agent_id)
        if previous is not None and previous is not conn and previous.ha:
            self.demote(previous, epoch)
        elif previous is not None and previous is not conn:  # a socket without HA that registered before any lease
            await self.close_without_ha(previous)
        await conn.send(Role(role="active", epoch=epoch, lease=secret))  # before any command can reach it
        if not await self.activate(conn, taken_at):
            return False
        requeue = partial(self.store.commands.requeue_other_epochs, conn.agent_id, epoch)
        moved = await self.store.until_done(requeue)
        if promoted:
            metrics.HA_PROMOTIONS.inc()
        log.info(
            "agent_active", agent_id=conn.agent_id, instance_id=conn.instance_id, epoch=epoch, redelivered=len(moved)
        )
        return True

    def demote(self, conn: AgentConnection, epoch: int) -> None:
        """It lost the lease: it stays connected as a standby and starts nothing new."""
        if self.connections.get(conn.agent_id) is conn:
            del self.connections[conn.agent_id]
            metrics.AGENTS_CONNECTED.set(len(self.connections))
        self.standbys.setdefault(conn.agent_id, {})[conn.instance_id] = conn
        conn.send_later(Role(role="standby", epoch=epoch))
        log.info("agent_demoted", agent_id=conn.agent_id, instance_id=conn.instance_id, epoch=epoch)

    async def close_without_ha(self, conn: AgentConnection) -> None:
        """It registered before the agent's first lease; its leaving cleans up what it owns (unregister)."""
        log.warning("agent_without_ha_closed", agent_id=conn.agent_id, instance_id=conn.instance_id)
        await conn.ws.close(code=closecodes.HA_REQUIRED, message=b"this agent runs with HA leases: hello with ha")

    def forget(self, conn: AgentConnection) -> None:
        standbys = self.standbys.get(conn.agent_id, {})
        if standbys.get(conn.instance_id) is conn:
            del standbys[conn.instance_id]
            if not standbys:
                del self.standbys[conn.agent_id]
        if self.connections.get(conn.agent_id) is conn:
            del self.connections[conn.agent_id]
            metrics.AGENTS_CONNECTED.set(len(self.connections))

    def on_lease_released(self, agent_id: str) -> None:
        """A NOTIFY (or upkeep): this agent's lease may be free; a standby here may take it now."""
        if agent_id in self.standbys and agent_id not in self._promoting:
            self.in_background(self.promote_a_standby(agent_id))

    async def promote_a_standby(self, agent_id: str) -> None:
        self._promoting.add(agent_id)
        try:
            for conn in sorted(self.standbys.get(agent_id, {}).values(), key=lambda c: c.last_seen, reverse=True):
                if not conn.ws.closed and await self.take_lease(conn):
                    return
        finally:
            self._promoting.discard(agent_id)

    async def requeue_unseen(self, conn: AgentConnection, registered_at: datetime) -> None:
        """The agent's hello lists all it runs and all it finished without a confirmation: its commands
        sent before this socket registered that are in neither list were lost on the way; put them back."""
        known = [*conn.hello.running, *conn.hello.unreported]
        requeue = partial(self.store.commands.requeue_unseen, conn.agent_id, registered_at, known)
        rows = await self.store.until_done(requeue)
        if rows:
            metrics.COMMANDS_REQUEUED_ON_HELLO.inc(len(rows))
            log.info(
                "requeued_on_hello",
                agent_id=conn.agent_id,
                commands=[row["command_id"] for row in rows],
                failed=sum(row["status"] == "failed" for row in rows),
            )

    async def unregister(self, conn: AgentConnection) -> None:
        if not conn.registered:
            return  # refused before it registered: it owns no mapping, row, instance or lease
        if conn.ha:
            await self.unregister_instance(conn)
            return
        if self.connections.get(conn.agent_id) is not conn:
            return  # replaced by a newer socket, which owns the mapping now
        await self.deactivate(conn)

    async def deactivate(self, conn: AgentConnection) -> None:
        self.forget(conn)
        with contextlib.suppress(RedisError):
            await self.routing.remove_if_owner(conn.agent_id, self.pod)
            newer = self.connections.get(conn.agent_id)
            if newer is not None and self.subscribed:  # it registered while we removed: its mapping may be gone
                await self.routing.register(conn.agent_id, self.pod, self.mapping_ttl)
        if conn.registered_at is not None:  # guarded by connection: a newer socket's row is left online
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self.store.presence.agent_offline(conn.agent_id, conn.registered_at)

    async def unregister_instance(self, conn: AgentConnection) -> None:
        active = self.connections.get(conn.agent_id) is conn
        if active:
            await self.deactivate(conn)
        else:
            self.forget(conn)
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.store.leases.instance_gone(conn.agent_id, conn.instance_id)
            # Tell the gateways with standbys (this one too) to take over now; but not when this replica
            # is stopping: its 1012 sends the active replica to another gateway at once, where it keeps
            # its lease and its work in flight (a standby promoted meanwhile would run that work again).
            # Should it not come back, the lease lapses within 3 heartbeat intervals and a standby takes it.
            # The same for an agent asked to move (4412, rebalance.py).
            if active and conn.epoch and not self.closing and not conn.moving:
                await self.store.leases.release(conn.agent_id, conn.instance_id, conn.epoch)

    async def close_all(self, code: int, message: bytes) -> None:
        for conn in self.all_sockets():
            await conn.ws.close(code=code, message=message)

    def all_sockets(self) -> list[AgentConnection]:
        standbys = [conn for by_instance in self.standbys.values() for conn in by_instance.values()]
        return [*self.connections.values(), *standbys]

    async def shutdown(self) -> None:
        """Graceful stop (§3): agents reconnect elsewhere at once; our mappings and rows go."""
        self.closing = True
        agent_ids = list(self.connections)
        with contextlib.suppress(*TRANSIENT_ERRORS):  # before the 1012: the replicas reconnect elsewhere at once
            await self.store.leases.vacate_pod()
        await self.close_all(closecodes.SERVICE_RESTART, b"gateway restarting")
        for agent_id in agent_ids:
            with contextlib.suppress(RedisError):
                await self.routing.remove_if_owner(agent_id, self.pod)
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.store.pod_gone()
        with contextlib.suppress(TimeoutError):  # what is left, the agents resend (they hold it unconfirmed)
            await asyncio.wait_for(self.writer.drained(), DRAIN_TIMEOUT)


REGISTRY_KEY = web.AppKey("registry", AgentRegistry)
