"""Wake on NOTIFY (or the sweep), claim due commands, route each to its agent's gateway replica (§2).

Two loops share one wake-up flag: the listener sets it on every NOTIFY and after every reconnect
of its LISTEN connection; the claimer clears it BEFORE each claim, so a NOTIFY landing while an
empty claim is in flight causes another claim at once instead of waiting for the sweep.

A round woken only by NOTIFYs looks at the agents they name (the payload is the agent id): one query
less on a lone command's way. An INSERT for several agents at once (the bulk path) NOTIFYs once, with
DISPATCH_EVERY_AGENT: that round scans. Every other wake-up (sweep, reconnect, retry, a streak, a recheck, a
failed round) scans for every agent with due commands (`wake_all`).

Routing goes through Redis while it answers and through PostgreSQL while it does not (bus.py); after
a Redis failure the PostgreSQL path is used for REDIS_PROBE_INTERVAL before Redis is tried again, so
an unreachable Redis costs one failed call per second, not one per claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any

import asyncpg
import structlog
from redis.exceptions import RedisError

from streamspace_common.bus import DeliveryBus, PostgresBus, RedisBus, delivery_of
from streamspace_common.commands import CommandLifecycle
from streamspace_common.db import load_queries, server_settings
from streamspace_common.delivery_auth import DeliverySigner
from streamspace_common.keys import DISPATCH_CHANNEL, DISPATCH_EVERY_AGENT
from streamspace_common.resilience import Outage, forever
from streamspace_common.routing import RoutingTable
from streamspace_common.schemas import Delivery

from . import metrics
from .retries import RetryScheduler
from .streaks import Streak

STREAK_MIN = 2  # commands a round must claim to start a streak: a lone command wakes nobody's streak
RECHECK_AFTER = 0.1  # seconds before a round that left due commands behind (send window full) looks again
REDIS_PROBE_INTERVAL = 1.0  # seconds on the PostgreSQL path after a Redis failure before Redis is tried again
RETRY_WAKE_DELAY = 0.05  # seconds from a NOTIFY to the retry scheduler's look (one look for all NOTIFYs meanwhile)
ROUTED_LATELY_MAX = 16  # agents a NOTIFY round may claim for before reading their routes (beyond: routes first)
ROUTED_MEMORY = 100_000  # agents remembered as routed at the last look (least recently routed forgotten first)
QUERIES = load_queries("streamspace_dispatcher")
log = structlog.get_logger("dispatcher")


class Dispatcher:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        routing: RoutingTable,
        name: str,
        signer: DeliverySigner,
        sweep_interval: float,
        ack_timeout: float,
        batch_size: int,
        send_window: int = 1000,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.routing = routing
        self.redis_bus = RedisBus(routing, signer)  # every delivery is signed (delivery_auth.py)
        self.postgres_bus = PostgresBus(pool, signer)
        self.redis_outage = Outage("redis", log)
        self.redis_retry_at = 0.0  # monotonic time before which Redis is not tried
        self.commands = CommandLifecycle(pool)
        self.name = name
        self.sweep_interval = sweep_interval
        self.ack_timeout = ack_timeout
        self.batch_size = batch_size
        self.send_window = send_window
        self.recheck: asyncio.TimerHandle | None = None  # the next round's wake-up, when one is due later
        self.streak = Streak(pool, name)
        self.due_agents = False  # the last round found routable agents with due commands
        self.retries: RetryScheduler | None = None  # set by the app: retries through RabbitMQ
        self.wake = asyncio.Event()
        self.scan_all = False  # the next round looks at every agent with due commands
        self.notified: set[str] = set()  # agents named by NOTIFYs since the last round began
        self.scanned_at = 0.0  # monotonic time of the last round that scanned every agent
        self.listening = False
        self.listen_outage = Outage("postgres_listen", log)
        # agents Redis routed at their last look, oldest first: their next NOTIFY round claims while routing
        self.routed: OrderedDict[str, None] = OrderedDict()
        self.retry_wake: asyncio.TimerHandle | None = None  # the retry scheduler's wake-up after NOTIFYs, when set

    # --- the LISTEN connection -------------------------------------------------------------

    async def run_listener(self) -> None:
        await forever(self._listen, self.listen_outage)

    async def _listen(self) -> None:
        """Hold one LISTEN connection until it is lost (then return, and `forever` opens another)."""
        conn = await asyncpg.connect(self.dsn, server_settings=server_settings("dispatcher", self.name))
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _: lost.set())
            await conn.add_listener(DISPATCH_CHANNEL, self._on_notify)
            self.listening = True
            self.listen_outage.recovered()
            self.wake_all()  # NOTIFYs are lost while nobody listens: scan after every (re)connect
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=self.sweep_interval)
                await conn.execute("SELECT 1")  # a half-dead TCP link shows up here
        finally:
            self.listening = False
            conn.terminate()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, agent_id: str) -> None:
        if agent_id == DISPATCH_EVERY_AGENT:  # one INSERT for several agents (a bulk create): scan them all
            self.scan_all = True
        else:
            self.notified.add(agent_id)
        self.wake.set()
        self.wake_retries_soon()  # the row may have gone back to wait (a retryable failure)

    def wake_all(self) -> None:
        self.scan_all = True
        self.wake.set()

    def wake_retries(self) -> None:
        if self.retries is not None:
            self.retries.wake.set()

    def wake_retries_soon(self) -> None:
        """Wake the retry scheduler RETRY_WAKE_DELAY from now, once for every NOTIFY meanwhile. A NOTIFY
        cannot say whether a row went back to wait (a retryable failure) or was just created, so each one
        may mean a wait to schedule; woken at once, the scheduler ran a transaction beside every claim,
        on the same cores as the command's own way. A wait's length is counted from its next_attempt_at,
        so one scheduled later by this delay is not longer."""
        if self.retries is None or self.retry_wake is not None:
            return
        self.retry_wake = asyncio.get_running_loop().call_later(RETRY_WAKE_DELAY, self._wake_retries_now)

    def _wake_retries_now(self) -> None:
        self.retry_wake = None
        self.wake_retries()

    # --- claiming and routing --------------------------------------------------------------

    async def run_claimer(self) -> None:
        # Retried at least every second: commands must flow within a second of Redis returning (§3).
        await forever(self.claim_round, Outage("dispatch", log), cap=1.0)

    async def claim_round(self) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=self.sweep_interval)
            metrics.WAKEUPS.labels("notify").inc()
        except TimeoutError:
            metrics.WAKEUPS.labels("sweep").inc()
            self.wake_retries()  # safety net: waits a lost NOTIFY left unscheduled
            self.scan_all = True
        self.wake.clear()  # before the claim, never after
        if time.monotonic() >= self.scanned_at + self.sweep_interval:
            self.scan_all = True  # NOTIFY-only rounds never put the sweep off
        agent_ids = None if self.scan_all else list(self.notified)
        if self.scan_all:
            self.scanned_at = time.monotonic()
        self.scan_all = False
        self.notified = set()
        try:
            claimed = await self.dispatch_once(agent_ids)
            await self.plan_next_round(claimed)
        except BaseException:
            self.wake_all()  # try again as soon as the backoff allows, not at the next sweep
            raise

    async def plan_next_round(self, claimed: int) -> None:
        """Straight on while rounds claim work (a streak: creators skip their NOTIFY meanwhile), else
        after the streak's last round, a delay, or the next wake-up."""
        if claimed >= min(STREAK_MIN, self.batch_size) or (claimed and self.streak.on):
            if self.streak.due_for_refresh:
                self.wake_retries()  # a retry wait recorded meanwhile skipped its NOTIFY too
            if await self.streak.keep():
                self.wake_all()
                return
            # Another dispatcher claims round after round: it takes the rest.
        if self.streak.ending:
            delay = await self.streak.end()
            if delay is None:
                self.wake_retries()
                self.wake_all()  # the last round: a creator may have committed after this round's snapshot
                return
            self.wake_after(delay)
        if self.due_agents:
            # Agents had due commands and may still have some, held back by the send window (or their
            # concurrency, or session order): an acknowledgement frees a window slot without a NOTIFY,
            # so look again shortly, for as long as such agents remain.
            self.wake_after(RECHECK_AFTER)

    def wake_after(self, delay: float) -> None:
        """Wake the claimer after `delay` seconds, unless a wake-up due sooner is already set."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.recheck is not None:
            if now < self.recheck.when() <= now + delay:
                return
            self.recheck.cancel()
        self.recheck = loop.call_later(delay, self.wake_all)

    async def dispatch_once(self, agent_ids: list[str] | None = None) -> int:
        """One claim round for these agents (None: every agent with due commands)."""
        if agent_ids is None:
            agent_ids = [row["agent_id"] for row in await self.pool.fetch(QUERIES["agents_with_due_commands"], 10_000)]
        if self.routed_lately(agent_ids):
            bus, pods, rows = await self.claim_while_routing(agent_ids)
        else:
            bus, pods = await self.routes(agent_ids)
            self.due_agents = bool(pods)
            if not pods:
                return 0  # offline agents keep their commands pending, at no attempt's cost
            rows = await self.commands.claim(list(pods), self.batch_size, self.ack_timeout, self.name, self.send_window)
        if not rows:
            return 0
        metrics.COMMANDS_CLAIMED.inc(len(rows))
        metrics.CLAIM_BATCH.observe(len(rows))
        gone = [row for row in rows if row["agent_id"] not in pods]  # offline since they were last routed
        rows = [row for row in rows if row["agent_id"] in pods]
        await self.requeue(gone)
        try:
            receivers = await self.publish(bus, [(pods[row["agent_id"]], delivery_of(row)) for row in rows])
        except BaseException:
            await self.requeue(rows)  # whatever did go out is deduplicated by the agent
            raise
        unroutable = [row for row, count in zip(rows, receivers, strict=True) if count == 0]
        stale: dict[str, list[str]] = {}  # agent -> its unroutable commands: one mapping removal per agent
        for row in unroutable:
            stale.setdefault(row["agent_id"], []).append(row["command_id"])
        for agent_id, command_ids in stale.items():
            await self.stale_mapping(agent_id, pods[agent_id], command_ids)
        metrics.COMMANDS_UNROUTABLE.inc(len(unroutable))
        await self.requeue(unroutable)
        return len(rows)

    def routed_lately(self, agent_ids: list[str]) -> bool:
        """Every one of these agents had a route in Redis at the last look (and Redis answers): the claim
        need not wait for the route, which is read alongside it."""
        return (
            0 < len(agent_ids) <= ROUTED_LATELY_MAX
            and time.monotonic() >= self.redis_retry_at
            and all(agent_id in self.routed for agent_id in agent_ids)
        )

    async def claim_while_routing(
        self, agent_ids: list[str]
    ) -> tuple[DeliveryBus, dict[str, str], list[asyncpg.Record]]:
        """Claim for agents that were routable at the last look while their routes are read again: the
        Redis round trip overlaps the claim's instead of preceding it. The fresh routes decide where each
        row goes; a row whose agent has no route any more goes back to pending, attempt refunded."""
        lookup = asyncio.ensure_future(self.routes(agent_ids))
        try:
            rows = await self.commands.claim(agent_ids, self.batch_size, self.ack_timeout, self.name, self.send_window)
        except BaseException:
            lookup.cancel()
            raise
        try:
            bus, pods = await lookup
        except BaseException:
            await self.requeue(rows)
            raise
        self.due_agents = bool(pods)
        return bus, pods, rows

    async def routes(self, agent_ids: list[str]) -> tuple[DeliveryBus, dict[str, str]]:
        """The path to use now, and the agents it can reach."""
        if time.monotonic() >= self.redis_retry_at:
            try:
                pods = await self.redis_bus.routes(agent_ids)
                self.redis_outage.recovered()
                self.remember_routes(agent_ids, pods)
                return self.redis_bus, pods
            except RedisError as exc:
                self.redis_failed(exc)
        self.routed.clear()
        return self.postgres_bus, await self.postgres_bus.routes(agent_ids)

    def remember_routes(self, agent_ids: list[str], pods: dict[str, str]) -> None:
        """Which agents Redis routed at the last look (a hint for `routed_lately`, never a route itself)."""
        for agent_id in agent_ids:
            if agent_id in pods:
                self.routed[agent_id] = None
                self.routed.move_to_end(agent_id)
            else:
                self.routed.pop(agent_id, None)
        while len(self.routed) > ROUTED_MEMORY:
            self.routed.popitem(last=False)

    async def publish(self, bus: DeliveryBus, deliveries: list[tuple[str, Delivery]]) -> list[int]:
        if bus is self.redis_bus:
            try:
                receivers = await bus.publish(deliveries)
                metrics.COMMANDS_ROUTED.labels(bus.name).inc(len(deliveries))
                return receivers
            except RedisError as exc:  # what did go out before the failure is deduplicated by the agent
                self.redis_failed(exc)
                bus = self.postgres_bus
        receivers = await bus.publish(deliveries)
        metrics.COMMANDS_ROUTED.labels(bus.name).inc(len(deliveries))
        return receivers

    def redis_failed(self, exc: BaseException) -> None:
        self.redis_outage.failed(exc)
        self.redis_retry_at = time.monotonic() + REDIS_PROBE_INTERVAL

    async def stale_mapping(self, agent_id: str, pod: str, command_ids: list[str]) -> None:
        """Nobody listens on that pod's channel: drop the mapping; the agent counts as offline."""
        log.info("stale_mapping", agent_id=agent_id, command_ids=command_ids, pod=pod)
        self.routed.pop(agent_id, None)
        await self.routing.remove_if_owner(agent_id, pod)

    async def requeue(self, rows: list[asyncpg.Record]) -> None:
        await self.commands.requeue_sent([row["command_id"] for row in rows], [row["attempts"] for row in rows])
