"""The delivery bus: how a dispatcher hands a claimed command to the gateway replica holding its agent
(§2 step 3, §3 "Redis outage").

Two paths behind one small interface (`routes`, `publish`), like python-socketio's pub/sub managers:

- **Redis**, the fast path: the routing cache `agent:{id}:pod` and a PUBLISH on `pod:{pod}:commands`.
  PUBLISH answers how many replicas received each message, so a stale mapping shows at once.
- **PostgreSQL**, while Redis is unreachable: the agent's replica from `agents.gateway_pod` and a NOTIFY
  on that replica's own channel (`keys.pod_notify_channel`), which every gateway LISTENs on
  (`PostgresListener`). A NOTIFY payload holds at most 8000 bytes, so it hands over (command_id,
  attempt) pairs and the gateway reads the rows. NOTIFY cannot count receivers, so routes go only to
  replicas whose LISTEN connection is alive in pg_stat_activity; a replica that no longer holds the
  agent gives the command back at once, as on the Redis path.

Both paths carry the dispatcher's signature (delivery_auth.py): a gateway forwards nothing that Redis
or a NOTIFY alone could have made up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncpg
import msgspec
import structlog

from .db import load_queries
from .delivery_auth import DeliverySigner, DeliveryVerifier
from .keys import ACCESS_CHANNEL, LEASE_CHANNEL, POD_CHANNEL_PREFIX, pod_notify_channel
from .resilience import Outage, forever
from .routing import RoutingTable
from .schemas import Command, Delivery, HandOver

QUERIES = load_queries("streamspace_common", "bus.sql")
NOTIFY_PAYLOAD_LIMIT = 7900  # bytes; PostgreSQL refuses a payload of 8000 or more
SIGNED_FIELDS_LIMIT = 420  # bytes a hand-over's pod (at most 253), expiry, key id and signature add
log = structlog.get_logger("bus")
_encoder = msgspec.json.Encoder()


class DeliveryBus(Protocol):
    name: str

    async def routes(self, agent_ids: list[str]) -> dict[str, str]:
        """agent -> the replica holding its socket, for the agents this path can reach now."""

    async def publish(self, deliveries: list[tuple[str, Delivery]]) -> list[int]:
        """Send each (pod, delivery); how many replicas received each (0: nobody listens on that pod)."""


def delivery_of(row: asyncpg.Record) -> Delivery:
    """The delivery of a claimed agent_commands row (claim and handed_over return the same columns)."""
    command = Command(
        command_id=row["command_id"], action=row["action"], payload=row["payload"], session_id=row["session_id"]
    )
    return Delivery(agent_id=row["agent_id"], command=command, attempt=row["attempts"], epoch=row["epoch"])


class RedisBus:
    name = "redis"

    def __init__(self, routing: RoutingTable, signer: DeliverySigner) -> None:
        self.routing = routing
        self.signer = signer

    async def routes(self, agent_ids: list[str]) -> dict[str, str]:
        return await self.routing.lookup(agent_ids)

    async def publish(self, deliveries: list[tuple[str, Delivery]]) -> list[int]:
        now = time.time()
        sign = self.signer.sign
        messages = [
            (pod, _encoder.encode(msgspec.structs.replace(sign(d, pod, now), published_at=now)))
            for pod, d in deliveries
        ]
        return await self.routing.publish_many(messages)


class PostgresBus:
    name = "postgres"

    def __init__(self, pool: asyncpg.Pool, signer: DeliverySigner) -> None:
        self.pool = pool
        self.signer = signer

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
        for pod, commands in by_pod.items():
            for chunk in hand_over_chunks(commands):
                channels.append(pod_notify_channel(pod))
                payloads.append(_encoder.encode(self.signer.sign_hand_over(pod, chunk, now)).decode())
        await self.pool.execute(QUERIES["hand_over"], channels, payloads)
        return [1] * len(deliveries)  # routes() found each pod's listener alive


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


class PostgresListener:
    """A gateway's end of the PostgreSQL path: LISTENs on its pod's channel and delivers what it is handed.
    The same connection also hears of released HA leases (keys.LEASE_CHANNEL) for `on_lease_released`, and
    of ended credentials (keys.ACCESS_CHANNEL) for `on_access_revoked`."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        pod: str,
        deliver: Callable[[Delivery], Awaitable[None]],
        verifier: DeliveryVerifier,
        on_lease_released: Callable[[str], None] | None = None,
        on_access_revoked: Callable[[str], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.verifier = verifier
        self.channel = pod_notify_channel(pod)
        self.deliver = deliver
        self.on_lease_released = on_lease_released
        self.on_access_revoked = on_access_revoked
        self.listening = False
        self.outage = Outage("postgres_listen", log)
        self._decoder = msgspec.json.Decoder(HandOver)

    async def run(self) -> None:
        await forever(self._listen, self.outage, cap=1.0)

    async def _listen(self) -> None:
        """Hold the LISTEN connection until it is lost (then return, and `forever` opens another)."""
        # application_name = channel: dispatchers find the live listeners in pg_stat_activity.
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": self.channel})
        handed: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            conn.add_termination_listener(lambda _: handed.put_nowait(None))
            await conn.add_listener(self.channel, lambda *args: handed.put_nowait(args[3]))
            if self.on_lease_released is not None:
                released = self.on_lease_released
                await conn.add_listener(LEASE_CHANNEL, lambda *args: released(args[3]))
            if self.on_access_revoked is not None:
                revoked = self.on_access_revoked
                await conn.add_listener(ACCESS_CHANNEL, lambda *args: revoked(args[3]))
            self.listening = True
            self.outage.recovered()
            while (payload := await handed.get()) is not None:
                await self._deliver_handed(payload)
        finally:
            self.listening = False
            conn.terminate()

    async def _deliver_handed(self, payload: str) -> None:
        try:
            hand_over = self._decoder.decode(payload)
        except msgspec.DecodeError as exc:
            self.verifier.malformed("postgres", str(exc))
            return
        if not self.verifier.admit_hand_over(hand_over, time.time()):
            return
        commands = hand_over.commands
        command_ids = [command_id for command_id, _ in commands]
        attempts = [attempt for _, attempt in commands]
        # A failure here (PostgreSQL gone) ends the connection; the rows stay sent and their ack deadline retries them.
        rows = await self.pool.fetch(QUERIES["handed_over"], command_ids, attempts)
        for row in rows:
            await self.deliver(delivery_of(row))
