"""Wake on NOTIFY (or the sweep), claim due commands, route each to its agent's gateway replica (§2).

Two loops share one wake-up flag: the listener sets it on every NOTIFY and after every reconnect
of its LISTEN connection; the claimer clears it BEFORE each claim, so a NOTIFY landing while an
empty claim is in flight causes another claim at once instead of waiting for the sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import msgspec
import structlog
from redis.exceptions import RedisError

from streamspace_common.db import CONNECT_ERRORS, load_queries
from streamspace_common.resilience import Backoff, Outage
from streamspace_common.routing import RoutingTable
from streamspace_common.schemas import Command, Delivery

from . import metrics

CHANNEL = "streamspace_dispatch"
RETRY_BACKOFF_CAP = 30.0  # seconds
QUERIES = load_queries("streamspace_dispatcher")
SHARED = load_queries("streamspace_common")
log = structlog.get_logger("dispatcher")


class Dispatcher:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        routing: RoutingTable,
        name: str,
        sweep_interval: float,
        ack_timeout: float,
        batch_size: int,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.routing = routing
        self.name = name
        self.sweep_interval = sweep_interval
        self.ack_timeout = ack_timeout
        self.batch_size = batch_size
        self.wake = asyncio.Event()
        self.listening = False
        self._encoder = msgspec.json.Encoder()

    # --- the LISTEN connection -------------------------------------------------------------

    async def run_listener(self) -> None:
        outage = Outage("postgres_listen", log)
        backoff = Backoff(cap=5.0)
        while True:
            try:
                await self._listen(outage, backoff)
            except CONNECT_ERRORS as exc:
                outage.failed(exc)
            await asyncio.sleep(backoff.next_delay())

    async def _listen(self, outage: Outage, backoff: Backoff) -> None:
        conn = await asyncpg.connect(self.dsn)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _: lost.set())
            await conn.add_listener(CHANNEL, self._on_notify)
            self.listening = True
            outage.recovered()
            backoff.reset()
            self.wake.set()  # NOTIFYs are lost while nobody listens: scan after every (re)connect
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=self.sweep_interval)
                await conn.execute("SELECT 1")  # a half-dead TCP link shows up here
        finally:
            self.listening = False
            conn.terminate()

    def _on_notify(self, *_: Any) -> None:
        self.wake.set()

    # --- claiming and routing --------------------------------------------------------------

    async def run_claimer(self) -> None:
        outage = Outage("dispatch", log)
        backoff = Backoff(cap=5.0)
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.sweep_interval)
                metrics.WAKEUPS.labels("notify").inc()
            except TimeoutError:
                metrics.WAKEUPS.labels("sweep").inc()
            self.wake.clear()  # before the claim, never after
            try:
                claimed = await self.dispatch_once()
                outage.recovered()
                backoff.reset()
            except (*CONNECT_ERRORS, RedisError) as exc:
                outage.failed(exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            if claimed >= self.batch_size:
                self.wake.set()  # a full batch: there is probably more

    async def dispatch_once(self) -> int:
        agent_ids = [row["agent_id"] for row in await self.pool.fetch(QUERIES["agents_with_due_commands"], 10_000)]
        pods = await self.routing.lookup(agent_ids)
        if not pods:
            return 0  # offline agents keep their commands pending, at no attempt's cost
        rows = await self.pool.fetch(
            QUERIES["claim_commands"], list(pods), self.batch_size, self.ack_timeout, self.name
        )
        if not rows:
            return 0
        metrics.COMMANDS_CLAIMED.inc(len(rows))
        metrics.CLAIM_BATCH.observe(len(rows))
        messages = [(pods[row["agent_id"]], self._encoder.encode(delivery_of(row))) for row in rows]
        receivers = await self.routing.publish_many(messages)
        for row, (pod, _), count in zip(rows, messages, receivers, strict=True):
            if count == 0:
                await self.unroutable(row["agent_id"], row["command_id"], pod)
        return len(rows)

    async def run_expiry(self) -> None:
        """Every sweep interval: commands whose ack deadline passed are retried later or failed."""
        outage = Outage("expiry", log)
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                rows = await self.pool.fetch(QUERIES["expire_unacknowledged"], RETRY_BACKOFF_CAP)
                outage.recovered()
            except CONNECT_ERRORS as exc:
                outage.failed(exc)
                continue
            for row in rows:
                log.info(
                    "ack_deadline_passed",
                    command_id=row["command_id"],
                    agent_id=row["agent_id"],
                    status=row["status"],
                    attempts=row["attempts"],
                )
                metrics.ACK_TIMEOUTS.labels(row["status"]).inc()

    async def unroutable(self, agent_id: str, command_id: str, pod: str) -> None:
        """Nobody listens on that pod's channel: the mapping is stale; the agent counts as offline."""
        log.info("stale_mapping", agent_id=agent_id, command_id=command_id, pod=pod)
        metrics.COMMANDS_UNROUTABLE.inc()
        await self.routing.remove_if_owner(agent_id, pod)
        await self.pool.execute(SHARED["requeue_sent"], command_id)


def delivery_of(row: asyncpg.Record) -> Delivery:
    command = Command(
        command_id=row["command_id"], action=row["action"], payload=row["payload"], session_id=row["session_id"]
    )
    return Delivery(agent_id=row["agent_id"], command=command)
