"""This pod's channel on the delivery bus: deliveries from dispatchers, forwarded to the agent sockets.

Both backends of the bus (streamspace_common.bus) are held at once: the Redis channel (the fast path)
and the PostgreSQL LISTEN (used by dispatchers while Redis is unreachable; its connection also hears of
released HA leases and ended credentials). Each yields only deliveries a dispatcher signed. A delivery
goes to the socket the registry holds active for its agent, with that socket's lease epoch; one claimed
under another epoch, or for an agent not (or no longer) here, is given back at once and claimed again.
"""

from __future__ import annotations

import contextlib
import time
from functools import partial

import msgspec
import structlog
from redis.exceptions import RedisError

from streamspace_common.bus import PostgresBus, RedisBus
from streamspace_common.delivery_auth import DeliveryVerifier
from streamspace_common.resilience import Outage, forever
from streamspace_common.schemas import Delivery

from . import metrics
from .registry import AgentRegistry

log = structlog.get_logger("gateway.pod_channel")


class PodChannel:
    def __init__(
        self, registry: AgentRegistry, redis_bus: RedisBus, postgres_bus: PostgresBus, verifier: DeliveryVerifier
    ) -> None:
        self.registry = registry
        self.redis_bus = redis_bus
        self.postgres_bus = postgres_bus
        self.verifier = verifier  # what the pod channel carries is forwarded only if a dispatcher signed it
        self.listening = False  # the PostgreSQL LISTEN is held
        self.listen_outage = Outage("postgres_listen", log)
        self._encoder = msgspec.json.Encoder()

    @property
    def ready(self) -> bool:
        """Commands can reach this replica by either path."""
        return self.registry.subscribed or self.listening

    async def run_redis(self) -> None:
        await forever(self._hold_redis, self.registry.redis_outage, cap=1.0)

    async def run_postgres(self) -> None:
        await forever(self._hold_postgres, self.listen_outage, cap=1.0)

    async def _hold_redis(self) -> None:
        """Hold the Redis subscription; on every (re)connect the registry re-writes all local mappings."""
        try:
            async with self.redis_bus.subscribe(self.registry.pod, self.verifier) as deliveries:
                await self.registry.routable_again()
                log.info("subscribed", channel=self.registry.routing.keys.pod_commands(self.registry.pod))
                async for delivery in deliveries:
                    await self.forward(delivery)
        finally:
            self.registry.subscribed = False

    async def _hold_postgres(self) -> None:
        """Hold the LISTEN connection until it is lost (then return, and `forever` opens another)."""
        try:
            async with self.postgres_bus.subscribe(self.registry.pod, self.verifier) as deliveries:
                self.listening = True
                self.listen_outage.recovered()
                async for delivery in deliveries:
                    await self.forward(delivery)
        finally:
            self.listening = False

    async def forward(self, delivery: Delivery) -> None:
        """Send a delivery (from either path of the bus) to its agent's socket, or give it back at once."""
        conn = self.registry.connections.get(delivery.agent_id)
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
            self.registry.in_background(self.give_back(delivery, here=True))
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
        self.registry.in_background(self.give_back(delivery))

    async def give_back(self, delivery: Delivery, here: bool = False) -> None:
        """Requeue the command at once; unless the agent is `here` (the delivery's epoch was not its socket's),
        it is not (or no longer) on this replica: drop our stale mapping."""
        if not here:
            log.info("agent_not_here", agent_id=delivery.agent_id, command_id=delivery.command.command_id)
            with contextlib.suppress(RedisError):
                await self.registry.routing.remove_if_owner(delivery.agent_id, self.registry.pod)
        requeue = partial(self.registry.store.commands.requeue_sent, [delivery.command.command_id], [delivery.attempt])
        await self.registry.store.until_done(requeue)
        metrics.COMMANDS_REQUEUED.inc()
