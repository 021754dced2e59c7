"""streamspace-dispatcher: the claim/route loops, plus /healthz, /readyz and /metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import web

from streamspace_common.db import create_pool, server_settings
from streamspace_common.delivery_auth import DeliverySigner, load_delivery_keys, parse_delivery_keys
from streamspace_common.keys import RedisKeys
from streamspace_common.log import configure_logging
from streamspace_common.routing import RoutingTable, create_redis
from streamspace_common.settings import load_settings
from streamspace_common.web import add_health_routes, background, serve

from .deadlines import Deadlines
from .dispatcher import Dispatcher
from .idle import IdleHibernator
from .reconcile import Reconciler
from .retention import Retention
from .retries import RetryScheduler
from .settings import DispatcherSettings

DEFAULT_PORT = 8090
DISPATCHER_KEY = web.AppKey("dispatcher", Dispatcher)
log = structlog.get_logger("dispatcher")


def create_app(settings: DispatcherSettings) -> web.Application:
    if settings.delivery_keys:
        parse_delivery_keys(settings.delivery_keys)  # a malformed DELIVERY_KEYS stops the process at once
    app = web.Application()

    def is_ready() -> bool:
        dispatcher = app.get(DISPATCHER_KEY)
        return dispatcher is not None and dispatcher.listening

    add_health_routes(app, is_ready)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url, server_settings("dispatcher", settings.pod_name))
        redis = create_redis(settings.redis_url)
        dispatcher = Dispatcher(
            settings.database_url,
            pool,
            RoutingTable(redis, RedisKeys(settings.redis_key_prefix)),
            name=settings.pod_name,
            signer=DeliverySigner(await load_delivery_keys(pool, settings.delivery_keys)),
            sweep_interval=settings.sweep_interval,
            ack_timeout=settings.ack_timeout,
            batch_size=settings.claim_batch_size,
            send_window=settings.send_window,
        )
        retries = RetryScheduler(settings.rabbitmq_url, pool, dispatcher.wake_all)
        dispatcher.retries = retries
        app[DISPATCHER_KEY] = dispatcher
        deadlines = Deadlines(
            pool,
            interval=settings.deadline_interval,
            command_timeout=settings.command_timeout,
            batch_size=settings.claim_batch_size,
            count_interval=settings.sweep_interval,
            on_pending_again=dispatcher.wake_retries,
        )
        loops = (dispatcher.run_listener(), dispatcher.run_claimer(), deadlines.run())
        sessions = (
            IdleHibernator(pool, settings.idle_check_interval).run(),
            Reconciler(pool, settings.reconcile_interval, settings.heartbeat_interval, settings.agent_lost_after).run(),
            Retention(
                pool,
                audit_days=settings.audit_retention_days,
                command_days=settings.command_retention_days,
                inventory_hours=settings.inventory_retention_hours,
                interval=settings.prune_interval,
            ).run(),
        )
        async with background(*loops, *sessions, retries.run_connection(), retries.run_scheduler()):
            yield
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await dispatcher.streak.abandon()
        await redis.aclose()
        await pool.close()

    app.cleanup_ctx.append(resources)
    return app


def main() -> None:
    settings = load_settings(DispatcherSettings)
    configure_logging(settings.log_format, settings.log_level, service="dispatcher", pod=settings.pod_name)
    port = settings.port_or(DEFAULT_PORT)
    log.info("starting", host=settings.host, port=port)
    serve(create_app(settings), settings.host, port)
