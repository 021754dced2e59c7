"""Real service processes for a test or bench run: gateways, dispatchers and agents as subprocesses
(`Stack`), a throwaway redis-server, and stand-in peers served in-process (`serve_locally`). Every
process is started through `processes.spawn`, so none outlives the run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .env import RunEnv
from .processes import kill_group, register_sessions, spawn
from .waits import wait_until

SAMPLE_IMAGE = "streamspace/echo:dev"  # the docker tests' image (scripts/build-sample-images; conftest builds it)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bindable(port: int) -> bool:
    """No socket holds this loopback port now (listening or connected from it)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def serve_locally(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve an aiohttp app (a stand-in peer: a fake API, a scripted gateway, an in-process service) on a
    loopback port (a free one unless given); the caller ends it with `runner.cleanup()`."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


class RedisServer:
    """A throwaway redis-server of a test's own (never the machine's shared one), empty on every start."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/1"

    def start(self) -> None:
        self.process = spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        kill_group(self.process)
        self.process = None


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    metrics_port: int = 0  # a gateway's METRICS_PORT; 0: /metrics is on `port` (dispatcher, agent)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where this process serves /metrics: a gateway on its METRICS_PORT, the others on their PORT."""
        return f"http://127.0.0.1:{self.metrics_port or self.port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the process (and anything left in its process group)."""
        kill_group(self.process, timeout=10)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)


@dataclass
class Stack:
    """Starts real gateway, dispatcher and agent processes for a test and stops them afterwards."""

    env: RunEnv
    log_dir: Path
    services: list[Service] = field(default_factory=list)

    def start(self, name: str, module: str, extra_env: dict[str, str]) -> Service:
        port = free_port()
        log_path = self.log_dir / f"{name}.log"
        env = {**os.environ, **self.env.service_env(), "PORT": str(port), **extra_env}
        with log_path.open("wb") as log_file:
            process = spawn([sys.executable, "-m", module], env=env, stdout=log_file, stderr=subprocess.STDOUT)
        service = Service(name, process, port, log_path, int(extra_env.get("METRICS_PORT") or 0))
        self.services.append(service)
        return service

    def gateway(self, pod: str, **settings: str) -> Service:
        """A gateway replica; its /metrics on a port of its own (METRICS_PORT), never on the API port."""
        extra = {"POD_NAME": pod, "METRICS_PORT": str(free_port()), **settings}
        return self.start(pod, "streamspace_gateway", extra)

    def dispatcher(self, name: str = "dispatcher-1", **settings: str) -> Service:
        return self.start(name, "streamspace_dispatcher", {"POD_NAME": name, **settings})

    def agent(
        self, agent_id: str, token: str, gateways: list[Service], name: str | None = None, **settings: str
    ) -> Service:
        """An agent process; its journal lives in this test's directory unless AGENT_STATE_DIR is given
        (pass the same one again to restart the agent with its journal)."""
        name = name or f"agent-{agent_id}"
        urls = ",".join(gateway.url for gateway in gateways)
        state = str(self.log_dir / f"{name}-state")
        extra = {"AGENT_ID": agent_id, "AGENT_TOKEN": token, "GATEWAY_URLS": urls, "AGENT_STATE_DIR": state, **settings}
        if settings.get("LOCAL_SESSION_DIR"):
            register_sessions(Path(settings["LOCAL_SESSION_DIR"]))  # swept if this run is killed
        return self.start(name, "streamspace_agent", extra)

    async def ready(self, *services: Service, timeout: float = 30.0) -> None:
        async with aiohttp.ClientSession() as http:
            for service in services:

                async def probe(service: Service = service) -> bool:
                    if service.process.poll() is not None:
                        raise AssertionError(f"{service.name} exited:\n{service.log()}")
                    try:
                        async with http.get(service.url + "/readyz") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await wait_until(probe, timeout=timeout, what=f"{service.name} ready")

    def stop_all(self) -> None:
        for service in self.services:
            service.kill()

    def dump_logs(self) -> str:
        return "\n".join(f"===== {s.name} =====\n{s.log()}" for s in self.services)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()
