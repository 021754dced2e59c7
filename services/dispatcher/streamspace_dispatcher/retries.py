"""Retries through RabbitMQ (§2 step 6): a waiting command comes back within ~50 ms of its due time,
not at the next sweep.

A command to retry waits in PostgreSQL as `pending` with `next_attempt_at` in the future (the claim
skips it until then), so the database stays the truth and the sweep alone would still retry it, late.
This module makes it punctual. Topology (all quorum queues, durable, persistent messages, publisher
confirms):

    wait queue per step (x-message-ttl = 50 ms, 100 ms, 200 ms ... 25.6 s)
        --dead-letter--> exchange `streamspace.retry` (direct) --"ready"--> queue `streamspace.retry.ready`

Per-message TTL only expires at the head of a queue, so every message in one queue has the same TTL.
A wait of any length is a chain of hops: the message goes to the longest step not past the wait; when
it comes out of the ready queue the consumer re-reads the row (guarded by status and attempt: a
stale or duplicate message is dropped) and either sends it on for what is left or, within the
shortest step of its due time, makes the row due now and wakes the claimer. A wait of 1 s takes 3
hops (800 + 200 ms); of 30 s, 5.

Scheduling is a claim of its own: `schedule` marks waits `retry_scheduled_at` in the transaction that
publishes them, so two dispatchers never schedule one wait twice, and a publish that fails rolls the
mark back. While RabbitMQ is down nothing is marked; once it is back every unmarked wait is
scheduled (those already due have been claimed by the sweep meanwhile). The connection is one of our
own `resilience.forever` loops rather than aio-pika's robust connection, so RabbitMQ is logged and
retried like every other dependency, and the consumer is re-declared on every reconnect.

RABBITMQ_URL may list the nodes of a cluster, comma-separated: each connect tries them in turn,
starting with the one last connected, so a dead node is passed over for a living one (every queue
is a quorum queue, replicated on the cluster's nodes: docs/operations.md "High availability").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import asyncpg
import msgspec
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage
from aiormq.abc import FieldTable

from streamspace_common.db import load_queries
from streamspace_common.keys import RETRY_EXCHANGE, RETRY_READY_QUEUE, retry_wait_queue
from streamspace_common.resilience import Outage, forever
from streamspace_common.settings import SettingsError

from . import metrics

QUERIES = load_queries("streamspace_dispatcher", "retries.sql")
STEPS_MS = tuple(50 * 2**k for k in range(10))  # 50 ms ... 25.6 s
READY_ROUTING_KEY = "ready"
SCHEDULE_BATCH = 1000
PREFETCH = 500
# what a node that is down, unreachable or still starting answers a connect with: try the next node
CONNECT_ERRORS = (OSError, asyncio.TimeoutError, aio_pika.exceptions.AMQPError)
# Ready messages handled at once, each holding a pool connection for its statements: without a bound,
# 500 prefetched arrivals queued for the pool's 10 connections ahead of the claimer, so a burst of
# retries (or a table lock that stalls them) starved the claims (the chaos suite's scenario 7 saw it).
ARRIVALS_AT_ONCE = 4
log = structlog.get_logger("dispatcher.retries")


class RetryMessage(msgspec.Struct, forbid_unknown_fields=True):
    command_id: str
    attempt: int  # the row's attempts when it was put to wait: a newer claim makes the message stale


def next_step_ms(wait_seconds: float) -> int | None:
    """The longest step not past the wait; None when the wait is within the shortest step (due now)."""
    fitting = [step for step in STEPS_MS if step <= wait_seconds * 1000]
    return fitting[-1] if fitting else None


def amqp_urls(value: str) -> list[str]:
    """The URLs of RABBITMQ_URL: one, or several comma-separated (the nodes of a cluster)."""
    urls = [url.strip() for url in value.split(",") if url.strip()]
    if not urls:
        raise SettingsError("bad environment: RABBITMQ_URL names no URL")
    return urls


class RetryScheduler:
    def __init__(self, url: str, pool: asyncpg.Pool, wake_claimer: Callable[[], None]) -> None:
        self.urls = amqp_urls(url)
        self.current = 0  # the URL tried first: the one last connected
        self.pool = pool
        self.wake_claimer = wake_claimer
        self.outage = Outage("rabbitmq", log)
        self.exchange: AbstractExchange | None = None  # set while connected
        self.channel: AbstractChannel | None = None
        self.wake = asyncio.Event()  # there may be waits to schedule
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(RetryMessage)
        self.arrivals = asyncio.Semaphore(ARRIVALS_AT_ONCE)

    @property
    def connected(self) -> bool:
        return self.exchange is not None

    # --- the connection ------------------------------------------------------------------------

    async def run_connection(self) -> None:
        await forever(self._connected, self.outage, cap=5.0)

    async def _connected(self) -> None:
        """Hold one connection: declare the topology, consume the ready queue, until the link is lost."""
        connection = await self._connect()
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=PREFETCH)
            exchange = await self._declare(channel)
            ready = await channel.get_queue(RETRY_READY_QUEUE, ensure=False)
            await ready.consume(self._on_ready)
            self.channel, self.exchange = channel, exchange
            self.outage.recovered()
            self.wake.set()  # waits put aside while we were away get their messages now
            await lost.wait()
            raise ConnectionError("RabbitMQ connection lost")
        finally:
            self.channel = self.exchange = None
            if not connection.is_closed:
                await connection.close()

    async def _connect(self) -> AbstractConnection:
        """A connection to the first of the URLs that answers, starting with the one last connected;
        if none does, the last one's error."""
        error: BaseException = ConnectionError("RABBITMQ_URL names no URL")
        for offset in range(len(self.urls)):
            index = (self.current + offset) % len(self.urls)
            try:
                connection = await aio_pika.connect(self.urls[index], timeout=5)
            except CONNECT_ERRORS as exc:
                error = exc
                continue
            if index != self.current:
                log.info("rabbitmq_node_changed", node=index, nodes=len(self.urls))
            self.current = index
            return connection
        raise error

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        quorum: FieldTable = {"x-queue-type": "quorum"}
        exchange = await channel.declare_exchange(RETRY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        ready = await channel.declare_queue(RETRY_READY_QUEUE, durable=True, arguments=quorum)
        await ready.bind(exchange, READY_ROUTING_KEY)
        for step in STEPS_MS:
            arguments: FieldTable = {
                **quorum,
                "x-message-ttl": step,
                "x-dead-letter-exchange": RETRY_EXCHANGE,
                "x-dead-letter-routing-key": READY_ROUTING_KEY,
            }
            await channel.declare_queue(retry_wait_queue(step), durable=True, arguments=arguments)
        return exchange

    async def _publish(self, command_id: str, attempt: int, step_ms: int) -> None:
        """To the wait queue of `step_ms`, through the default exchange; returns once the broker confirmed."""
        if self.channel is None:
            raise ConnectionError("RabbitMQ is not connected")
        body = self._encoder.encode(RetryMessage(command_id=command_id, attempt=attempt))
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self.channel.default_exchange.publish(message, routing_key=retry_wait_queue(step_ms))

    # --- scheduling waits ------------------------------------------------------------------------

    async def run_scheduler(self) -> None:
        """Whenever woken (a command went back to wait, or RabbitMQ returned): put unscheduled waits on queues."""

        async def one_round() -> None:
            await self.wake.wait()
            self.wake.clear()  # before the round, so a wake during it causes another
            try:
                if self.connected and await self.schedule() >= SCHEDULE_BATCH:
                    self.wake.set()
            except BaseException:
                # its waits are still unscheduled (the marks rolled back): the round after the backoff
                # takes them, and logs PostgreSQL back, rather than waiting for the next wait to come
                self.wake.set()
                raise

        await forever(one_round, Outage("retry_scheduling", log), cap=1.0)

    async def schedule(self) -> int:
        """Mark up to SCHEDULE_BATCH unscheduled waits and publish each; the mark commits only if all were confirmed."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(QUERIES["schedule_waits"], SCHEDULE_BATCH)
            await asyncio.gather(*(self._publish_wait(row) for row in rows))
        metrics.RETRIES_SCHEDULED.inc(len(rows))
        return len(rows)

    async def _publish_wait(self, row: asyncpg.Record) -> None:
        step = next_step_ms(row["wait_seconds"])
        if step is None:
            self.wake_claimer()  # already (nearly) due: the claimer takes it now
            return
        await self._publish(row["command_id"], row["attempts"], step)

    # --- the ready queue -----------------------------------------------------------------------

    async def _on_ready(self, message: AbstractIncomingMessage) -> None:
        async with self.arrivals, message.process(requeue=True):  # an error (PostgreSQL gone): it comes back
            try:
                retry = self._decoder.decode(message.body)
            except msgspec.DecodeError as exc:
                log.error("bad_retry_message", error=str(exc))
                return
            await self.arrived(retry)

    async def arrived(self, retry: RetryMessage) -> None:
        wait = await self.pool.fetchval(QUERIES["remaining_wait"], retry.command_id, retry.attempt)
        if wait is None:
            return  # claimed by the sweep meanwhile, cancelled, or a duplicate: nothing to do
        step = next_step_ms(wait)
        if step is not None:
            await self._publish(retry.command_id, retry.attempt, step)
            return
        await self.pool.execute(QUERIES["due_now"], retry.command_id, retry.attempt)
        metrics.RETRY_LATENESS.observe(max(-wait, 0.0))
        self.wake_claimer()
