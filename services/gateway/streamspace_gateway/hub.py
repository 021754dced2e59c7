"""AgentHub: the agent sockets open on this replica, and their routing entries in Redis (§3).

It writes `agent:{id}:pod` when an agent registers, refreshes the mappings of live sockets every
heartbeat interval (so a crashed replica's mappings expire by themselves), subscribes to this pod's
command channel and forwards each delivery to the local socket.

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
registered changes nothing when it leaves. Every forward carries the active socket's epoch and a
delivery claimed under another epoch is given back, not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import msgspec
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from streamspace_common import closecodes
from streamspace_common.db import TRANSIENT_ERRORS
from streamspace_common.delivery_auth import DeliveryVerifier
from streamspace_common.resilience import Outage, forever
from streamspace_common.routing import RoutingTable
from streamspace_common.schemas import (
    FEATURE_CONFIRM,
    FEATURE_FENCE,
    FEATURE_HA,
    FEATURE_INVENTORY,
    FEATURES,
    Confirm,
    Delivery,
    Frame,
    Hello,
    Role,
)
from streamspace_common.settings import STALE_AFTER_INTERVALS
from streamspace_common.tokens import hash_token, new_token

from . import metrics
from .store import Store
from .writer import FrameWriter

log = structlog.get_logger("gateway.hub")
DRAIN_TIMEOUT = 5.0  # seconds a stopping replica waits for queued acks and results to be written
_encoder = msgspec.json.Encoder()


_SENDING: set[asyncio.Task[None]] = set()  # send_later's tasks until they finish, all sockets (few at a time)


@dataclass(eq=False, slots=True)
class AgentConnection:
    """One agent socket. Kept small (slots, no per-socket containers or bound loggers): a gateway holds
    tens of thousands of them (bench/README.md, "Idle sockets")."""

    hello: Hello
    ws: web.WebSocketResponse
    token_hash: str = ""  # of the agent token it authenticated with
    last_seen: float = field(default_factory=time.monotonic)
    registered_at: datetime | None = None  # agents.connected_at as its registration wrote it
    waiting: int = 0  # acks and results read from this socket and not yet committed
    epoch: int | None = None  # HA: the lease epoch of its last active term (0: never active); None: no HA
    registered: bool = False  # the hub admitted it: only then does its leaving change anything
    proof_hash: str | None = None  # hash of the lease secret it presented on connect (LEASE_HEADER)
    lease_hash: str | None = None  # hash of the lease secret this hub gave it with its last active role
    moving: bool = False  # asked to move (rebalance.py): its lease is vacated, not released, when it closes
    # Read for every socket in every upkeep round: looked up in the hello's features once, not each time.
    ha: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ha = FEATURE_HA in self.hello.features

    @property
    def agent_id(self) -> str:
        return self.hello.agent_id

    @property
    def features(self) -> list[str]:
        """The optional protocol features both sides use on this socket (none for an earlier agent)."""
        return [feature for feature in FEATURES if feature in self.hello.features]

    @property
    def confirms(self) -> bool:
        return FEATURE_CONFIRM in self.hello.features

    @property
    def fences(self) -> bool:
        return FEATURE_FENCE in self.hello.features and self.ha

    @property
    def instance_id(self) -> str:
        return self.hello.instance_id

    def mark_seen(self) -> None:
        now = time.monotonic()
        metrics.HEARTBEAT_GAP.observe(now - self.last_seen)
        self.last_seen = now

    def send_confirm(self, frame: Confirm) -> None:
        self.send_later(frame)  # if closed, the agent resends what it has not had confirmed on its next socket
        metrics.CONFIRMS_SENT.inc()

    def send_later(self, frame: Frame) -> None:
        """Send without waiting (a slow agent must not stall the caller); nothing if the socket closed."""
        if self.ws.closed:
            return
        task = asyncio.create_task(self._send(_encoder.encode(frame).decode()))
        _SENDING.add(task)
        task.add_done_callback(_SENDING.discard)

    async def send(self, frame: Frame) -> None:
        await self._send(_encoder.encode(frame).decode())

    async def _send(self, text: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)


class Refused(Exception):
    """A socket the hub will not register: closed with `code`, and the reason logged."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class AgentHub:
    def __init__(
        self, pod: str, routing: RoutingTable, store: Store, heartbeat_interval: float, deliveries: DeliveryVerifier
    ) -> None:
        self.pod = pod
        self.deliveries = deliveries  # what the pod channel carries is forwarded only if a dispatcher signed it
        self.routing = routing
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.mapping_ttl = max(1, round(STALE_AFTER_INTERVALS * heartbeat_interval))
        self.connections: dict[str, AgentConnection] = {}  # the active socket of each agent held here
        self.standbys: dict[str, dict[str, AgentConnection]] = {}  # HA agent -> instance -> standby socket
        self.subscribed = False
        self.closing = False
        self.redis_outage = Outage("redis", log)
        self.db_outage = Outage("postgres", log)
        self.lease_outage = Outage("postgres_leases", log)  # its own: back even with no active socket here
        # No lapsed lease is taken before this (monotonic): one lease TTL after PostgreSQL was last away, so
        # the holder's gateway, away as long, renews first (a lease that lapsed only because nobody could
        # renew it moved to a standby in one failover run, and the command in flight ran on both replicas).
        self.takeover_after = 0.0
        self.writer = FrameWriter(store.pool, pod)
        self._background: set[asyncio.Task[None]] = set()
        self._promoting: set[str] = set()  # agents whose standbys here are trying to take the lease
        self._delivery_decoder = msgspec.json.Decoder(Delivery)
        self._encoder = msgspec.json.Encoder()

    # --- sockets ---------------------------------------------------------------------------

    async def admit(self, conn: AgentConnection) -> None:
        """Refuse, before its welcome, a socket that must not register: one without HA for an agent run with
        HA leases (it would replace the active instance), or a second socket of an instance live here."""
        if conn.ha:
            self.check_instance(conn)
            return
        if await self.store.until_done(partial(self.store.leased_agents, [conn.agent_id])):
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
        await self.activate(conn, await self.store.until_done(self.store.registration_clock))

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
        conn.registered_at = await self.store.until_done(partial(self.store.agent_online, conn.hello, since))
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
        await self.store.until_done(partial(self.store.instance_connected, conn.agent_id, conn.instance_id))
        if not await self.take_lease(conn) and not conn.ws.closed:
            self.standbys.setdefault(conn.agent_id, {})[conn.instance_id] = conn
            epoch = await self.store.until_done(partial(self.store.lease_epoch, conn.agent_id))
            conn.send_later(Role(role="standby", epoch=epoch))

    async def take_lease(self, conn: AgentConnection) -> bool:
        """Become the active replica if the lease is free (or already ours); redeliver the old epoch's work.
        The holder is named by a new secret (agents with "fence"): the role frame carries it, the lease its hash."""
        secret = new_token() if conn.fences else None
        holder_hash = None if secret is None else hash_token(secret)
        acquire = partial(
            self.store.acquire_lease, conn.agent_id, conn.instance_id, self.mapping_ttl, conn.proof_hash, holder_hash
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
                await self.store.agent_offline(conn.agent_id, conn.registered_at)

    async def unregister_instance(self, conn: AgentConnection) -> None:
        active = self.connections.get(conn.agent_id) is conn
        if active:
            await self.deactivate(conn)
        else:
            self.forget(conn)
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.store.instance_gone(conn.agent_id, conn.instance_id)
            # Tell the gateways with standbys (this one too) to take over now; but not when this replica
            # is stopping: its 1012 sends the active replica to another gateway at once, where it keeps
            # its lease and its work in flight (a standby promoted meanwhile would run that work again).
            # Should it not come back, the lease lapses within 3 heartbeat intervals and a standby takes it.
            # The same for an agent asked to move (4412, rebalance.py).
            if active and conn.epoch and not self.closing and not conn.moving:
                await self.store.release_lease(conn.agent_id, conn.instance_id, conn.epoch)

    async def close_all(self, code: int, message: bytes) -> None:
        for conn in self.all_sockets():
            await conn.ws.close(code=code, message=message)

    # --- deliveries from the pod channel ---------------------------------------------------

    async def deliver(self, raw: bytes) -> None:
        """A delivery from the pod's Redis channel: forwarded only if a dispatcher signed it (delivery_auth.py)."""
        try:
            delivery = self._delivery_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            self.deliveries.malformed("redis", str(exc))
            return
        if self.deliveries.admit(delivery, time.time()):
            await self.forward(delivery)

    async def forward(self, delivery: Delivery) -> None:
        """Send a delivery (from either path of the bus) to its agent's socket, or give it back at once."""
        conn = self.connections.get(delivery.agent_id)
        if conn is not None and not conn.ws.closed and delivery.epoch != (conn.epoch if conn.ha else None):
            # Claimed under another lease term (or for a socket that holds none): never sent; given back at
            # once and claimed again under the active socket's epoch.
            log.warning(
                "forward_refused_epoch",
                agent_id=delivery.agent_id,
                command_id=delivery.command.command_id,
                epoch=delivery.epoch,
                socket_epoch=conn.epoch,
            )
            self.in_background(self.give_back(delivery, here=True))
            return
        if conn is not None and not conn.ws.closed:
            command = msgspec.structs.replace(delivery.command, epoch=conn.epoch) if conn.ha else delivery.command
            try:
                await conn.ws.send_str(self._encoder.encode(command).decode())
                metrics.COMMANDS_FORWARDED.inc()
                if delivery.published_at is not None:
                    metrics.PUBLISH_TO_FORWARD.observe(max(time.time() - delivery.published_at, 0.0))
                return
            except (ConnectionError, RuntimeError) as exc:
                log.info(
                    "forward_failed",
                    agent_id=delivery.agent_id,
                    command_id=delivery.command.command_id,
                    error=str(exc),
                )
        # Off the channel-reading loop, so a PostgreSQL outage never stalls deliveries to other agents.
        self.in_background(self.give_back(delivery))

    async def give_back(self, delivery: Delivery, here: bool = False) -> None:
        """Requeue the command at once; unless the agent is `here` (the delivery's epoch was not its socket's),
        it is not (or no longer) on this replica: drop our stale mapping."""
        if not here:
            log.info("agent_not_here", agent_id=delivery.agent_id, command_id=delivery.command.command_id)
            with contextlib.suppress(RedisError):
                await self.routing.remove_if_owner(delivery.agent_id, self.pod)
        requeue = partial(self.store.commands.requeue_sent, [delivery.command.command_id], [delivery.attempt])
        await self.store.until_done(requeue)
        metrics.COMMANDS_REQUEUED.inc()

    async def run_subscription(self) -> None:
        await forever(self._subscribe_and_forward, self.redis_outage, cap=1.0)

    async def _subscribe_and_forward(self) -> None:
        """Hold the pod channel subscription; on every (re)connect re-write all local mappings."""
        channel = self.routing.keys.pod_commands(self.pod)
        pubsub = self.routing.redis.pubsub()
        try:
            await pubsub.subscribe(channel)
            while (await pubsub.get_message(timeout=1.0)) is None:  # wait for the confirmation
                pass
            # Set before the snapshot below: an agent registering from here on writes its own mapping.
            self.subscribed = True
            await self.routing.refresh(list(self.connections), self.pod, self.mapping_ttl)
            self.redis_outage.recovered()
            if self.connections:  # their mappings may have gone with Redis: they are routable again
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    await self.store.wake_dispatchers(list(self.connections))
            log.info("subscribed", channel=channel)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # redis-py may swallow a cancellation: honour it
                    raise asyncio.CancelledError
                if message is not None and message["type"] == "message":
                    await self.deliver(message["data"])
        finally:
            self.subscribed = False
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    # --- upkeep ----------------------------------------------------------------------------

    async def run_upkeep(self) -> None:
        """Every heartbeat interval: close stale sockets, refresh mappings and last_heartbeat."""

        async def one_round() -> None:
            await asyncio.sleep(self.heartbeat_interval)
            await self.upkeep_once()

        await forever(one_round, Outage("upkeep", log))

    def all_sockets(self) -> list[AgentConnection]:
        standbys = [conn for by_instance in self.standbys.values() for conn in by_instance.values()]
        return [*self.connections.values(), *standbys]

    async def upkeep_once(self) -> None:
        now = time.monotonic()
        deadline = now - STALE_AFTER_INTERVALS * self.heartbeat_interval
        sockets = self.all_sockets()
        metrics.HEARTBEAT_AGE_MAX.set(max((now - conn.last_seen for conn in sockets), default=0.0))
        for conn in sockets:
            if conn.last_seen < deadline:
                log.info("agent_stale", agent_id=conn.agent_id, instance_id=conn.instance_id)
                metrics.STALE_CLOSES.inc()
                await conn.ws.close(code=closecodes.STALE, message=b"no heartbeat for 3 intervals")
        try:
            await self.keep_leases()
            await self.close_revoked()
            self.lease_outage.recovered()
        except TRANSIENT_ERRORS as exc:
            self.lease_outage.failed(exc)
            self.takeover_after = time.monotonic() + self.mapping_ttl
        live = [agent_id for agent_id, conn in self.connections.items() if not conn.ws.closed]
        if not live:
            return
        if self.subscribed:
            try:
                await self.routing.refresh(live, self.pod, self.mapping_ttl)
            except RedisError as exc:
                self.redis_outage.failed(exc)
        try:
            await self.store.touch_heartbeats(live)
            self.db_outage.recovered()
        except TRANSIENT_ERRORS as exc:
            self.db_outage.failed(exc)

    async def close_revoked(self) -> None:
        """Sockets whose agent token was revoked since they connected are closed (within a heartbeat interval)."""
        sockets = self.all_sockets()
        revoked = await self.store.revoked_tokens({conn.token_hash for conn in sockets})
        for conn in sockets:
            if conn.token_hash in revoked:
                expired = revoked[conn.token_hash]
                event = "agent_token_expired" if expired else "agent_token_revoked"
                log.warning(event, agent_id=conn.agent_id, instance_id=conn.instance_id)
                reason = b"agent token expired" if expired else b"agent token revoked"
                await conn.ws.close(code=closecodes.TOKEN_REVOKED, message=reason)

    async def keep_leases(self) -> None:
        """Renew the leases of our active HA sockets (one that another instance took meanwhile is lost:
        demote), and let our standbys take any lease that lapsed (its gateway died)."""
        active = [c for c in self.connections.values() if c.ha and c.epoch and not c.ws.closed and not c.moving]
        lost = await self.store.renew_leases(
            [c.agent_id for c in active],
            [c.instance_id for c in active],
            [c.epoch or 0 for c in active],
            self.mapping_ttl,
        )
        for conn in active:
            if conn.agent_id in lost:
                self.demote(conn, await self.store.lease_epoch(conn.agent_id))
        waiting = [agent_id for agent_id in self.standbys if agent_id not in self.connections]
        if waiting and time.monotonic() >= self.takeover_after:
            for agent_id in await self.store.lapsed_leases(waiting):  # one query, not a take per standby
                self.on_lease_released(agent_id)  # in the background: upkeep must not wait on an outage
        instances = [c for c in self.all_sockets() if c.ha]
        await self.store.touch_instances([c.agent_id for c in instances], [c.instance_id for c in instances])
        without_ha = [c.agent_id for c in self.connections.values() if not c.ha and not c.ws.closed]
        for agent_id in await self.store.leased_agents(without_ha):  # registered before the agent's first lease
            legacy = self.connections.get(agent_id)
            if legacy is not None and not legacy.ha:
                await self.close_without_ha(legacy)

    async def shutdown(self) -> None:
        """Graceful stop (§3): agents reconnect elsewhere at once; our mappings and rows go."""
        self.closing = True
        agent_ids = list(self.connections)
        with contextlib.suppress(*TRANSIENT_ERRORS):  # before the 1012: the replicas reconnect elsewhere at once
            await self.store.vacate_pod_leases()
        await self.close_all(closecodes.SERVICE_RESTART, b"gateway restarting")
        for agent_id in agent_ids:
            with contextlib.suppress(RedisError):
                await self.routing.remove_if_owner(agent_id, self.pod)
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.store.pod_agents_offline()
        with contextlib.suppress(TimeoutError):  # what is left, the agents resend (they hold it unconfirmed)
            await asyncio.wait_for(self.writer.drained(), DRAIN_TIMEOUT)


HUB_KEY = web.AppKey("hub", AgentHub)
