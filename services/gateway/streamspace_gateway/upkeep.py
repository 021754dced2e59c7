"""Upkeep of this replica's agent sockets, every heartbeat interval: close stale and revoked sockets,
renew the HA leases of the active ones (a lost lease demotes its socket) and let standbys take a lapsed
one, refresh the Redis mappings and agents.last_heartbeat of the live ones."""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.exceptions import RedisError

from streamspace_common import closecodes
from streamspace_common.db import TRANSIENT_ERRORS
from streamspace_common.resilience import Outage, forever
from streamspace_common.settings import STALE_AFTER_INTERVALS

from . import metrics
from .registry import AgentRegistry

log = structlog.get_logger("gateway.upkeep")


class Upkeep:
    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry
        self.store = registry.store
        self.db_outage = Outage("postgres", log)
        self.lease_outage = Outage("postgres_leases", log)  # its own: back even with no active socket here
        # No lapsed lease is taken before this (monotonic): one lease TTL after PostgreSQL was last away, so
        # the holder's gateway, away as long, renews first (a lease that lapsed only because nobody could
        # renew it moved to a standby in one failover run, and the command in flight ran on both replicas).
        self.takeover_after = 0.0

    async def run(self) -> None:
        """Every heartbeat interval: close stale sockets, refresh mappings and last_heartbeat."""

        async def one_round() -> None:
            await asyncio.sleep(self.registry.heartbeat_interval)
            await self.once()

        await forever(one_round, Outage("upkeep", log))

    async def once(self) -> None:
        registry = self.registry
        now = time.monotonic()
        deadline = now - STALE_AFTER_INTERVALS * registry.heartbeat_interval
        sockets = registry.all_sockets()
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
            self.takeover_after = time.monotonic() + registry.mapping_ttl
        live = [agent_id for agent_id, conn in registry.connections.items() if not conn.ws.closed]
        if not live:
            return
        if registry.subscribed:
            try:
                await registry.routing.refresh(live, registry.pod, registry.mapping_ttl)
            except RedisError as exc:
                registry.redis_outage.failed(exc)
        try:
            await self.store.presence.touch_heartbeats(live)
            self.db_outage.recovered()
        except TRANSIENT_ERRORS as exc:
            self.db_outage.failed(exc)

    async def close_revoked(self) -> None:
        """Sockets whose agent token was revoked since they connected are closed (within a heartbeat interval)."""
        sockets = self.registry.all_sockets()
        revoked = await self.store.tokens.revoked_tokens({conn.token_hash for conn in sockets})
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
        registry = self.registry
        active = [c for c in registry.connections.values() if c.ha and c.epoch and not c.ws.closed and not c.moving]
        lost = await self.store.leases.renew(
            [c.agent_id for c in active],
            [c.instance_id for c in active],
            [c.epoch or 0 for c in active],
            registry.mapping_ttl,
        )
        for conn in active:
            if conn.agent_id in lost:
                registry.demote(conn, await self.store.leases.epoch(conn.agent_id))
        waiting = [agent_id for agent_id in registry.standbys if agent_id not in registry.connections]
        if waiting and time.monotonic() >= self.takeover_after:
            for agent_id in await self.store.leases.lapsed(waiting):  # one query, not a take per standby
                registry.on_lease_released(agent_id)  # in the background: upkeep must not wait on an outage
        instances = [c for c in registry.all_sockets() if c.ha]
        await self.store.leases.touch_instances([c.agent_id for c in instances], [c.instance_id for c in instances])
        without_ha = [c.agent_id for c in registry.connections.values() if not c.ha and not c.ws.closed]
        for agent_id in await self.store.leases.leased_agents(without_ha):  # registered before the agent's first lease
            legacy = registry.connections.get(agent_id)
            if legacy is not None and not legacy.ha:
                await registry.close_without_ha(legacy)
