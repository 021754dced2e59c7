"""streamspace-agent: the gateway link plus a small /healthz, /readyz, /metrics server."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from streamspace_common.log import configure_logging
from streamspace_common.web import add_health_routes, background, serve

from . import metrics
from .client import AgentClient
from .drivers import create_driver
from .drivers.settings import load_agent_settings
from .executor import Executor
from .journal import Journal, state_dir
from .settings import AgentSettings
from .tunnels import Tunnels

DEFAULT_PORT = 8091
log = structlog.get_logger("agent")


def create_app(settings: AgentSettings) -> web.Application:
    driver = create_driver(settings)
    tunnels = Tunnels(
        driver,
        settings.gateway_urls,
        settings.stream_idle_timeout,
        settings.stream_max_per_session,
        settings.stream_max_per_agent,
        settings.tunnel_networks,
    )
    executor = Executor(driver, Journal(state_dir(settings.agent_state_dir, settings.agent_id)), tunnels)
    executor.restore()
    metrics.UNCONFIRMED.set_function(lambda: len(executor.unconfirmed))
    client = AgentClient(
        settings.agent_id,
        settings.agent_token,
        settings.gateway_urls,
        executor,
        settings.heartbeat_interval,
        settings.agent_concurrency,
        max_sessions=settings.agent_max_sessions,
        random_start=settings.agent_gateway_start == "random",
    )
    if settings.agent_execution_log:
        executor.log_executions(settings.agent_execution_log, client.instance_id)
    app = web.Application()
    add_health_routes(app, lambda: client.connected)

    async def link(_: web.Application) -> AsyncIterator[None]:
        async with background(client.run(), executor.run_journal()):
            yield
        await executor.cancel_all()
        await tunnels.close()
        await driver.close()

    app.cleanup_ctx.append(link)
    return app


def main() -> None:
    settings = load_agent_settings()
    configure_logging(settings.log_format, settings.log_level, service="agent", agent_id=settings.agent_id)
    missing = [name for name in ("agent_id", "agent_token") if not getattr(settings, name)]
    if missing:
        log.error("missing_settings", missing=[name.upper() for name in missing])
        sys.exit(2)
    try:
        app = create_app(settings)
    except (ValueError, OSError) as exc:
        log.error("bad_settings", error=str(exc))
        sys.exit(2)
    port = settings.port_or(DEFAULT_PORT)
    log.info("starting", platform=settings.agent_platform, gateways=settings.gateway_urls, port=port)
    serve(app, settings.host, port)
