"""streamspace-gateway: the app factory and its background loops."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from redis.asyncio import Redis

from streamspace_common.bus import PostgresBus, RedisBus
from streamspace_common.db import create_pool, server_settings
from streamspace_common.delivery_auth import DeliveryVerifier, load_delivery_keys, parse_delivery_keys
from streamspace_common.keys import ACCESS_CHANNEL, LEASE_CHANNEL, RedisKeys
from streamspace_common.log import configure_logging
from streamspace_common.passwords import configure as configure_passwords
from streamspace_common.routing import RoutingTable, create_redis
from streamspace_common.schemas import CONNECT_PATH
from streamspace_common.settings import STALE_AFTER_INTERVALS, load_settings
from streamspace_common.web import add_health_routes, background, metrics_listener, serve

from . import metrics
from .agent_socket import agent_connect
from .api import add_api_routes
from .api.bulk_commands import BULK_BYTES_KEY
from .api.commands import COMMAND_EXPIRY_KEY
from .api.sessions import HEARTBEAT_WITHIN_KEY, QUOTA_KEY
from .api.streams import STREAMS_KEY, StreamConfig
from .auth import AUTH_KEY, Authenticator, signing_secret
from .console import add_console_routes
from .errors import json_errors
from .pod_channel import PodChannel
from .rebalance import REBALANCER_KEY, Rebalancer
from .registry import REGISTRY_KEY, AgentRegistry
from .request_context import add_headers, request_context
from .revocation import OPEN_STREAMS_KEY, OpenStreams
from .settings import GatewaySettings
from .store import STORE_KEY, Store
from .throttle import ADDRESSES_KEY, THROTTLE_KEY, ClientAddresses, LoginThrottle
from .tickets import StreamTickets
from .tunnels import TUNNEL_PATH, TunnelBroker
from .upkeep import Upkeep

DEFAULT_PORT = 8000
# One descriptor per agent socket, plus the pool, Redis, listeners and headroom: 50,000 agents on one
# replica is the sizing goal (bench/README.md, docs/operations.md "Open files").
OPEN_FILES_NEEDED = 50_000 + 1_024
POD_CHANNEL_KEY = web.AppKey("pod_channel", PodChannel)
log = structlog.get_logger("gateway")


def create_app(settings: GatewaySettings) -> web.Application:
    if settings.delivery_keys:
        parse_delivery_keys(settings.delivery_keys)  # a malformed DELIVERY_KEYS stops the process at once
    app = web.Application(middlewares=[request_context, json_errors], client_max_size=settings.max_request_bytes)
    app.on_response_prepare.append(add_headers)
    app.router.add_get(CONNECT_PATH, agent_connect)  # before /agents/{agent_id}
    broker = TunnelBroker(tunnel_url(settings))
    app.router.add_get(TUNNEL_PATH, broker.agent_dial)
    add_api_routes(app)
    add_console_routes(app, settings.novnc_dir)
    app[QUOTA_KEY] = settings.session_quota
    app[COMMAND_EXPIRY_KEY] = settings.command_expiry
    app[BULK_BYTES_KEY] = settings.max_bulk_request_bytes
    app[HEARTBEAT_WITHIN_KEY] = STALE_AFTER_INTERVALS * settings.heartbeat_interval
    app[ADDRESSES_KEY] = ClientAddresses(settings.trusted_proxies)
    configure_passwords(settings.password_hash_memory)

    def is_ready() -> bool:
        """Not while stopping; otherwise while commands can reach us by either path. Not tied to Redis
        alone: a Redis outage must not take every replica out of a Kubernetes Service (§3)."""
        registry, pod_channel = app.get(REGISTRY_KEY), app.get(POD_CHANNEL_KEY)
        if registry is None or pod_channel is None or registry.closing:
            return False
        return pod_channel.ready

    add_health_routes(app, is_ready, with_metrics=False)  # never on the API port: METRICS_PORT

    async def metrics(_: web.Application) -> AsyncIterator[None]:
        async with metrics_listener(settings.host, settings.metrics_port):
            yield

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url, server_settings("gateway", settings.pod_name))
        redis = create_redis(settings.redis_url)
        store = Store(pool, settings.pod_name)
        await store.pod_gone()  # a restarted replica holds no sockets yet
        routing = RoutingTable(redis, RedisKeys(settings.redis_key_prefix))
        delivery_keys = await load_delivery_keys(pool, settings.delivery_keys)
        verifier = DeliveryVerifier(delivery_keys, settings.pod_name, refused_delivery)
        registry = AgentRegistry(settings.pod_name, routing, store, settings.heartbeat_interval)
        secret = await signing_secret(pool, settings.auth_secret)
        app[AUTH_KEY] = Authenticator(pool, secret, settings.auth_token_ttl)
        app[THROTTLE_KEY] = login_throttle(settings, redis, routing.keys)
        open_streams = app[OPEN_STREAMS_KEY] = OpenStreams(pool, secret, settings.stream_access_check)
        # The LISTEN connection also hears of released HA leases and of ended credentials.
        notices = {LEASE_CHANNEL: registry.on_lease_released, ACCESS_CHANNEL: open_streams.wake}
        postgres_bus = PostgresBus(pool, dsn=settings.database_url, notices=notices)
        pod_channel = PodChannel(registry, RedisBus(routing), postgres_bus, verifier)
        app[STORE_KEY], app[REGISTRY_KEY], app[POD_CHANNEL_KEY] = store, registry, pod_channel
        rebalance = (settings.rebalance_interval, settings.rebalance_tolerance, settings.rebalance_batch)
        rebalancer = app[REBALANCER_KEY] = Rebalancer(registry, *rebalance)
        tickets = StreamTickets(redis, routing.keys, settings.stream_ticket_ttl, secret)
        app[STREAMS_KEY] = StreamConfig(tickets, broker, settings.stream_setup_timeout)
        loops = (
            pod_channel.run_redis(),
            pod_channel.run_postgres(),
            Upkeep(registry).run(),
            registry.writer.run(),
            open_streams.run(),
            rebalancer.run(),
        )
        async with background(*loops):
            yield
        await redis.aclose()
        await pool.close()

    async def on_shutdown(app: web.Application) -> None:
        log.info("shutting_down")
        if STREAMS_KEY in app:
            await app[STREAMS_KEY].shutdown()
        await app[REGISTRY_KEY].shutdown()

    app.cleanup_ctx.append(metrics)
    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(on_shutdown)
    return app


def login_throttle(settings: GatewaySettings, redis: Redis, keys: RedisKeys) -> LoginThrottle:
    limits = settings.login_failure_limit, settings.login_address_limit
    return LoginThrottle(redis, keys, *limits, settings.login_failure_window)


def refused_delivery(path: str, reason: str) -> None:
    metrics.DELIVERIES_REFUSED.labels(path, reason).inc()


def tunnel_url(settings: GatewaySettings) -> str:
    """Where agents dial back to reach this replica's tunnels (TUNNEL_URL, else its own address)."""
    if settings.tunnel_url:
        base = settings.tunnel_url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return base if base.endswith(TUNNEL_PATH) else base + TUNNEL_PATH
    all_interfaces = ("0.0.0.0", "::", "")  # noqa: S104 (compared with, not bound to)
    host = settings.pod_ip or (settings.pod_name if settings.host in all_interfaces else settings.host)
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    return f"ws://{host}:{settings.port_or(DEFAULT_PORT)}{TUNNEL_PATH}"


def raise_open_files_limit(needed: int = OPEN_FILES_NEEDED) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (all an unprivileged process may); log what we got,
    and warn when it is below `needed` (each agent socket holds one descriptor). Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("open_files_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    log.info("open_files_limit", soft=soft, hard=hard, needed=needed)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open_files_limit_low",
            soft=soft,
            hard=hard,
            needed=needed,
            agent_sockets_at_most=max(soft - 1_024, 0),
            hint="raise the hard limit (ulimit -Hn, LimitNOFILE=, the container runtime's nofile ulimit)",
        )
    return int(soft)


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging(settings.log_format, settings.log_level, service="gateway", pod=settings.pod_name)
    port = settings.port_or(DEFAULT_PORT)
    log.info("starting", host=settings.host, port=port, metrics_port=settings.metrics_port or None)
    raise_open_files_limit()
    serve(create_app(settings), settings.host, port, shutdown_timeout=10)
