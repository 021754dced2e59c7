"""The delivery bus: how a dispatcher hands a claimed command to the gateway replica holding its agent
(§2 step 3, §3 "Redis outage").

Two backends behind one small interface (`routes`, `publish`, `subscribe`), like python-socketio's
pub/sub managers (`_publish`/`_listen`) or encode/broadcaster's backends: dispatchers publish, each
gateway replica subscribes to its own pod's channel.

- **Redis**, the fast path: the routing cache `agent:{id}:pod` and a PUBLISH on `pod:{pod}:commands`
  (keys.RedisKeys.pod_commands), to which the pod's gateway SUBSCRIBEs. PUBLISH answers how many
  replicas received each message, so a stale mapping shows at once.
- **PostgreSQL**, while Redis is unreachable: the agent's replica from `agents.gateway_pod` and a NOTIFY
  on that replica's own channel (`keys.pod_notify_channel`), which every gateway LISTENs on. A NOTIFY
  payload holds at most 8000 bytes, so it hands over (command_id, attempt) pairs and the gateway reads
  the rows. NOTIFY cannot count receivers, so routes go only to replicas whose LISTEN connection is
  alive in pg_stat_activity; a replica that no longer holds the agent gives the command back at once,
  as on the Redis path.

Both paths carry the dispatcher's signature (delivery_auth.py): `publish` signs, `subscribe` yields
only what a dispatcher signed, so a gateway forwards nothing that Redis or a NOTIFY alone could have
made up. A subscription is an `async with`: entered once the server confirmed it, left when it is
lost (the caller's `resilience.forever` opens the next one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import asyncpg
import msgspec
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .db import load_queries
from .delivery_auth import DeliverySigner, DeliveryVerifier
from .keys import POD_CHANNEL_PREFIX, pod_notify_channel
from .routing import RoutingTable
from .schemas import Command, Delivery, HandOver

QUERIES = load_queries("streamspace_common", "bus.sql")
NOTIFY_PAYLOAD_LIMIT = 7900  # bytes; PostgreSQL refuses a payload of 8000 or more
SIGNED_FIELDS_LIMIT = 420  # bytes a hand-over's pod (at most 253), expiry, key id and signature add
_encoder = msgspec.json.Encoder()
Deliveries = AsyncIterator[Delivery]


class DeliveryBus(Protocol):
    name: str

    async def routes(self, agent_ids: list[str]) -> dict[str, str]:
        """agent -> the replica holding its socket, for the agents this path can reach now."""

    async def publish(self, deliveries: list[tuple[str, Delivery]]) -> list[int]:
        """Send each (pod, delivery); how many replicas received each (0: nobody listens on that pod)."""

    def subscribe(self, pod: str, verifier: DeliveryVerifier) -> AbstractAsyncContextManager[Deliveries]:
        """Hold `pod`'s channel: entered once subscribed; iterate for the deliveries a dispatcher signed."""


def delivery_of(row: asyncpg.Record) -> Delivery:
    """The delivery of a claimed agent_commands row (claim and handed_over return the same columns)."""
    command = Command(
        command_id=row["command_id"], action=row["action"], payload=row["payload"], session_id=row["session_id"]
    )
    return Delivery(agent_id=row["agent_id"], command=command, attempt=row["attempts"], epoch=row["epoch"])


class RedisBus:
    """Dispatchers publish with a signer; a gateway subscribes with its verifier (it needs no signer)."""

    name = "redis"

    def __init__(self, routing: RoutingTable, signer: DeliverySigner | None = None) -> None:
        self.routing = routing
        self.signer = signer
        self._decoder = msgspec.json.Decoder(Delivery)

    async def routes(self, agent_ids: list[str]) -> dict[str, str]:
        return await self.routing.lookup(agent_ids)

    async def publish(self, deliveries: list[tuple[str, Delivery]]) -> list[int]:
        now = time.time()
        sign = signer_of(self.signer).sign
        messages = [
            (pod, _encoder.encode(msgspec.structs.replace(sign(d, pod, now), published_at=now)))
            for pod, d in deliveries
        ]
        return await self.routing.publish_many(messages)

    @contextlib.asynccontextmanager
    async def subscribe(self, pod: str, verifier: DeliveryVerifier) -> AsyncIterator[Deliveries]:
        pubsub = self.routing.redis.pubsub()
        try:
            await pubsub.subscribe(self.routing.keys.pod_commands(pod))
            while (await pubsub.get_message(timeout=1.0)) is None:  # wait for the confirmation
                pass
            async with contextlib.aclosing(self._deliveries(pubsub, verifier)) as deliveries:
                yield deliveries
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _deliveries(self, pubsub: PubSub, verifier: DeliveryVerifier) -> AsyncGenerator[Delivery, None]:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # redis-py may swallow a cancellation: honour it
                raise asyncio.CancelledError
            if message is None or message["type"] != "message":
                continue
            try:
                delivery = self._decoder.decode(message["data"])
            except msgspec.DecodeError as exc:
                verifier.malformed("redis", str(exc))
                continue
            if verifier.admit(delivery, time.time()):
                yield delivery


class PostgresBus:
    """Dispatchers publish with a signer; a gateway subscribes (its own LISTEN connection to `dsn`). The
    same connection can carry other NOTIFY channels (`notices`: channel -> callback with the payload)."""

    name = "postgres"

    def __init__(
        self,
        pool: asyncpg.Pool,
        signer: DeliverySigner | None = None,
        dsn: str = "",
        notices: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        self.pool = pool
        self.signer = signer
        self.dsn = dsn
        self.notices = dict(notices or {})
        self._decoder = msgspec.json.Decoder(HandOver)

    async def routes(self, agent_ids: list[str]) -> dict[str, str]:
        rows = await self.pool.fetch(QUERIES["online_agent_pods"], agent_ids)
        listening = {row[0] for row in await self.pool.fetch(QUERIES["listening_pods"], POD_CHANNEL_PREFIX)}
        return {
            row["agent_id"]: row["gateway_pod"] for row in rows if pod_notify_channel(row["gateway_pod"]) in listening
        }

    async def publish(self, deliveries: list[tuple[str, Delivery]]) -> list[int]:
        by_pod: dict[str, list[tuple[str, int]]] = {}
        for pod, delivery in deliveries:
            by_pod.setdefault(pod, []).append((delivery.command.command_id, delivery.attempt))
        channels: list[str] = []
        payloads: list[str] = []
        now = time.time()
        signer = signer_of(self.signer)
        for pod, commands in by_pod.items():
            for chunk in hand_over_chunks(commands):
                channels.append(pod_notify_channel(pod))
                payloads.append(_encoder.encode(signer.sign_hand_over(pod, chunk, now)).decode())
        await self.pool.execute(QUERIES["hand_over"], channels, payloads)
        return [1] * len(deliveries)  # routes() found each pod's listener alive

    @contextlib.asynccontextmanager
    async def subscribe(self, pod: str, verifier: DeliveryVerifier) -> AsyncIterator[Deliveries]:
        """LISTEN until the connection is lost (the iteration then ends)."""
        channel = pod_notify_channel(pod)
        # application_name = channel: dispatchers find the live listeners in pg_stat_activity.
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": channel})
        handed: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            conn.add_termination_listener(lambda _: handed.put_nowait(None))
            await conn.add_listener(channel, lambda *args: handed.put_nowait(args[3]))
            for notice_channel, callback in self.notices.items():
                await conn.add_listener(notice_channel, payload_to(callback))
            async with contextlib.aclosing(self._deliveries(handed, verifier)) as deliveries:
                yield deliveries
        finally:
            conn.terminate()

    async def _deliveries(
        self, handed: asyncio.Queue[str | None], verifier: DeliveryVerifier
    ) -> AsyncGenerator[Delivery, None]:
        while (payload := await handed.get()) is not None:
            try:
                hand_over = self._decoder.decode(payload)
            except msgspec.DecodeError as exc:
                verifier.malformed("postgres", str(exc))
                continue
            if not verifier.admit_hand_over(hand_over, time.time()):
                continue
            commands = hand_over.commands
            command_ids = [command_id for command_id, _ in commands]
            attempts = [attempt for _, attempt in commands]
            # A failure here (PostgreSQL gone) ends the subscription; the rows stay sent and their ack
            # deadline retries them.
            for row in await self.pool.fetch(QUERIES["handed_over"], command_ids, attempts):
                yield delivery_of(row)


def payload_to(callback: Callable[[str], None]) -> Callable[..., None]:
    """An asyncpg listener (connection, pid, channel, payload) that hands `callback` the payload."""
    return lambda *args: callback(args[3])


def signer_of(signer: DeliverySigner | None) -> DeliverySigner:
    if signer is None:
        raise TypeError("this bus was made without a DeliverySigner: only a dispatcher publishes")
    return signer


def hand_over_chunks(commands: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """The pairs in chunks whose signed HandOver stays under NOTIFY_PAYLOAD_LIMIT bytes (command ids are
    at most 255 bytes)."""
    chunks: list[list[tuple[str, int]]] = []
    chunk: list[tuple[str, int]] = []
    size = 0
    for command_id, attempt in commands:
        entry = len(command_id.encode()) + 16  # quotes, brackets, comma and the attempt's digits
        if chunk and size + entry > NOTIFY_PAYLOAD_LIMIT - 20 - SIGNED_FIELDS_LIMIT:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append((command_id, attempt))
        size += entry
    if chunk:
        chunks.append(chunk)
    return chunks
