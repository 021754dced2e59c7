"""AgentHub: the agent sockets open on this replica, and their routing entries in Redis (§3).

It writes `agent:{id}:pod` when an agent registers, refreshes the mappings of live sockets every
heartbeat interval (so a crashed replica's mappings expire by themselves), subscribes to this pod's
command channel and forwards each delivery to the local socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

import msgspec
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from streamspace_common import closecodes
from streamspace_common.db import TRANSIENT_ERRORS
from streamspace_common.resilience import Outage, forever
from streamspace_common.routing import RoutingTable
from streamspace_common.schemas import FEATURE_CONFIRM, FEATURE_INVENTORY, FEATURES, Confirm, Delivery, Hello

from . import metrics
from .store import Store
from .writer import FrameWriter

log = structlog.get_logger("gateway.hub")
STALE_AFTER_INTERVALS = 3
DRAIN_TIMEOUT = 5.0  # seconds a stopping replica waits for queued acks and results to be written
_encoder = msgspec.json.Encoder()


@dataclass(eq=False)
class AgentConnection:
    hello: Hello
    ws: web.WebSocketResponse
    last_seen: float = field(default_factory=time.monotonic)
    registered_at: datetime | None = None  # agents.connected_at as its registration wrote it
    waiting: int = 0  # acks and results read from this socket and not yet committed
    _sending: set[asyncio.Task[None]] = field(default_factory=set)

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

    def mark_seen(self) -> None:
        self.last_seen = time.monotonic()

    def send_confirm(self, frame: Confirm) -> None:
        if self.ws.closed:
            return  # the agent resends what it has not had confirmed on its next socket
        task = asyncio.create_task(self._send(_encoder.encode(frame).decode()))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        metrics.CONFIRMS_SENT.inc()

    async def _send(self, text: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)


class AgentHub:
    def __init__(self, pod: str, routing: RoutingTable, store: Store, heartbeat_interval: float) -> None:
        self.pod = pod
        self.routing = routing
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.mapping_ttl = max(1, round(STALE_AFTER_INTERVALS * heartbeat_interval))
        self.connections: dict[str, AgentConnection] = {}
        self.subscribed = False
        self.closing = False
        self.redis_outage = Outage("redis", log)
        self.db_outage = Outage("postgres", log)
        self.writer = FrameWriter(store.pool, pod)
        self._giving_back: set[asyncio.Task[None]] = set()
        self._delivery_decoder = msgspec.json.Decoder(Delivery)
        self._encoder = msgspec.json.Encoder()

    # --- sockets ---------------------------------------------------------------------------

    async def register(self, conn: AgentConnection) -> None:
        previous = self.connections.get(conn.agent_id)
        self.connections[conn.agent_id] = conn
        metrics.AGENTS_CONNECTED.set(len(self.connections))
        metrics.AGENT_CONNECTIONS.inc()
        if previous is not None:
            await previous.ws.close(code=closecodes.REPLACED, message=b"replaced by a newer connection")
        if self.subscribed:  # otherwise the subscription loop writes it once Redis is back
            try:
                await self.routing.register(conn.agent_id, self.pod, self.mapping_ttl)
            except RedisError as exc:
                self.redis_outage.failed(exc)
        conn.registered_at = await self.store.until_done(partial(self.store.agent_online, conn.hello))
        if FEATURE_INVENTORY in conn.hello.features and conn.registered_at is not None:
            task = asyncio.create_task(self.requeue_unseen(conn, conn.registered_at))
            self._giving_back.add(task)
            task.add_done_callback(self._giving_back.discard)

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
        if self.connections.get(conn.agent_id) is not conn:
            return  # replaced by a newer socket, which owns the mapping now
        del self.connections[conn.agent_id]
        metrics.AGENTS_CONNECTED.set(len(self.connections))
        with contextlib.suppress(RedisError):
            await self.routing.remove_if_owner(conn.agent_id, self.pod)
            newer = self.connections.get(conn.agent_id)
            if newer is not None and self.subscribed:  # it registered while we removed: its mapping may be gone
                await self.routing.register(conn.agent_id, self.pod, self.mapping_ttl)
        if conn.registered_at is not None:  # guarded by connection: a newer socket's row is left online
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self.store.agent_offline(conn.agent_id, conn.registered_at)

    async def close_all(self, code: int, message: bytes) -> None:
        for conn in list(self.connections.values()):
            await conn.ws.close(code=code, message=message)

    # --- deliveries from the pod channel ---------------------------------------------------

    async def deliver(self, raw: bytes) -> None:
        """A delivery from the pod's Redis channel."""
        try:
            delivery = self._delivery_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            log.error("bad_delivery", error=str(exc))
            return
        await self.forward(delivery)

    async def forward(self, delivery: Delivery) -> None:
        """Send a delivery (from either path of the bus) to its agent's socket, or give it back at once."""
        conn = self.connections.get(delivery.agent_id)
        if conn is not None and not conn.ws.closed:
            try:
                await conn.ws.send_str(self._encoder.encode(delivery.command).decode())
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
        task = asyncio.create_task(self.give_back(delivery))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def give_back(self, delivery: Delivery) -> None:
        """The agent is not (or no longer) here: drop our stale mapping, requeue the command at once."""
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
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- upkeep ----------------------------------------------------------------------------

    async def run_upkeep(self) -> None:
        """Every heartbeat interval: close stale sockets, refresh mappings and last_heartbeat."""

        async def one_round() -> None:
            await asyncio.sleep(self.heartbeat_interval)
            await self.upkeep_once()

        await forever(one_round, Outage("upkeep", log))

    async def upkeep_once(self) -> None:
        deadline = time.monotonic() - STALE_AFTER_INTERVALS * self.heartbeat_interval
        live: list[str] = []
        for conn in list(self.connections.values()):
            if conn.last_seen < deadline:
                log.info("agent_stale", agent_id=conn.agent_id)
                metrics.STALE_CLOSES.inc()
                await conn.ws.close(code=closecodes.STALE, message=b"no heartbeat for 3 intervals")
            else:
                live.append(conn.agent_id)
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

    async def shutdown(self) -> None:
        """Graceful stop (§3): agents reconnect elsewhere at once; our mappings and rows go."""
        self.closing = True
        agent_ids = list(self.connections)
        await self.close_all(closecodes.SERVICE_RESTART, b"gateway restarting")
        for agent_id in agent_ids:
            with contextlib.suppress(RedisError):
                await self.routing.remove_if_owner(agent_id, self.pod)
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.store.pod_agents_offline()
        with contextlib.suppress(TimeoutError):  # what is left, the agents resend (they hold it unconfirmed)
            await asyncio.wait_for(self.writer.drained(), DRAIN_TIMEOUT)


HUB_KEY = web.AppKey("hub", AgentHub)
