"""Services in the test's own process: a gateway or dispatcher built by its app factory (`create_app`) and
served on a real loopback port, so a test reaches it by URL like a subprocess service (`Service.url`) but
starts it in milliseconds and sees its failures in its own traceback. Settings are given as environment
variables, on top of the run's (`RunEnv.service_env`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

from streamspace_common.settings import load_settings
from streamspace_dispatcher.main import create_app as create_dispatcher
from streamspace_dispatcher.settings import DispatcherSettings
from streamspace_gateway.main import create_app as create_gateway
from streamspace_gateway.settings import GatewaySettings

from .env import RunEnv
from .stack import free_port, serve_locally


@dataclass
class InProcessService:
    """One app served in this process; `url` as a subprocess `Service` has it."""

    name: str
    app: web.Application
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_gateway(env: RunEnv, pod: str, **settings: str) -> InProcessService:
    port = free_port()
    environ = {**env.service_env(), "POD_NAME": pod, "PORT": str(port), **settings}
    app = create_gateway(load_settings(GatewaySettings, environ))
    runner, port = await serve_locally(app, port)
    return InProcessService(pod, app, runner, port)


async def start_dispatcher(env: RunEnv, name: str = "dispatcher-inproc", **settings: str) -> InProcessService:
    environ = {**env.service_env(), "POD_NAME": name, **settings}
    runner, port = await serve_locally(create_dispatcher(load_settings(DispatcherSettings, environ)))
    return InProcessService(name, runner.app, runner, port)


@dataclass
class InProcessStack:
    """Services started in this process for a test or a module, stopped together on leaving the block
    (last started, first stopped); as a subprocess `Stack` has them: `env` and `services`."""

    env: RunEnv
    services: list[InProcessService] = field(default_factory=list)

    async def gateway(self, pod: str, **settings: str) -> InProcessService:
        self.services.append(await start_gateway(self.env, pod, **settings))
        return self.services[-1]

    async def dispatcher(self, name: str = "dispatcher-inproc", **settings: str) -> InProcessService:
        self.services.append(await start_dispatcher(self.env, name, **settings))
        return self.services[-1]

    async def __aenter__(self) -> InProcessStack:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for service in reversed(self.services):
            await service.stop()
