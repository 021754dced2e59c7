"""Test support: an isolated environment per test run and real service processes.

Each test run gets its own PostgreSQL database (created, migrated, dropped), its own Redis key
and channel prefix, and its own RabbitMQ vhost, so concurrent runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiohttp import web

from streamspace_gateway.auth import password_fingerprint, sign_token, signing_secret
from streamspace_tools.admin import create_user

SAMPLE_IMAGE = "streamspace/echo:dev"  # the docker tests' image (scripts/build-sample-images; conftest builds it)

T = TypeVar("T")

BASE_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BASE_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/1")
BASE_RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
HEARTBEAT_INTERVAL = "2"  # short, so staleness and TTLs show within a test; never below 1 s on a busy CI box


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def rabbitmqctl(*args: str) -> None:
    """The shared broker's CLI; as root the Erlang cookie is the rabbitmq user's, so run it as that user."""
    ctl = shutil.which("rabbitmqctl", path="/usr/lib/rabbitmq/bin:" + os.environ.get("PATH", "")) or "rabbitmqctl"
    attempts = [[ctl, *args]]
    if os.geteuid() == 0:
        attempts.insert(0, ["runuser", "-u", "rabbitmq", "--", ctl, *args])
    for command in attempts:
        if subprocess.run(command, capture_output=True, timeout=60).returncode == 0:
            return
    raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed")


@dataclass
class RunEnv:
    """The per-run isolation: one database, one Redis prefix, one RabbitMQ vhost."""

    run_id: str
    database_url: str
    redis_url: str
    redis_prefix: str
    rabbitmq_url: str
    vhost: str

    def service_env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": self.redis_prefix,
            "RABBITMQ_URL": self.rabbitmq_url,
            "HEARTBEAT_INTERVAL": HEARTBEAT_INTERVAL,
            "SWEEP_INTERVAL": "1",
            # the periodic inventory round adds an INVENTORY_SESSIONS command to every agent; tests that
            # count their agent's commands must not see one, so only the tests of sessions ask for it
            "RECONCILE_INTERVAL": "3600",
            "ACK_TIMEOUT": "2",
            "LOG_FORMAT": "console",
            "LOG_LEVEL": "info",
            "HOST": "127.0.0.1",
            # every test client logs in from 127.0.0.1 and the run's Redis prefix is shared by all its tests
            # (schemathesis alone sends hundreds of logins): the per-address login limit is for its own tests
            "LOGIN_ADDRESS_LIMIT": "1000000",
            # tests place agents on gateways by the order of GATEWAY_URLS and count their sockets there: the
            # tests of rebalancing (test_rebalance.py, the chaos suite's scale run) turn both back on
            "AGENT_GATEWAY_START": "first",
            "REBALANCE_INTERVAL": "0",
        }


def new_test_env() -> RunEnv:
    run_id = uuid.uuid4().hex[:10]
    vhost = f"streamspace-test-{run_id}"
    rabbit = urlsplit(BASE_RABBITMQ_URL)
    return RunEnv(
        run_id=run_id,
        database_url=with_database(BASE_DATABASE_URL, f"streamspace_test_{run_id}"),
        redis_url=BASE_REDIS_URL,
        redis_prefix=f"test-{run_id}:",
        rabbitmq_url=urlunsplit(rabbit._replace(path=f"/{vhost}")),
        vhost=vhost,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kill_sessions(sessions: Path) -> None:
    """End the processes of local sessions under `sessions` (LOCAL_SESSION_DIR): they run in process groups
    of their own and outlive their killed agent. A session removed or rewritten meanwhile is skipped."""
    for state in sessions.glob("*/session.json"):
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, ProcessLookupError, PermissionError):
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGKILL)


async def serve_locally(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve an aiohttp app (a stand-in peer: a fake API, a scripted gateway) on a free loopback port;
    the caller ends it with `runner.cleanup()`."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def wait_for(probe: Callable[[], Awaitable[T | None]], timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll until probe() returns something truthy; fail with the last value after timeout."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value: {value!r})")
        await asyncio.sleep(interval)
        value = await probe()
    return value


class RedisServer:
    """A throwaway redis-server of a test's own (never the machine's shared one), empty on every start."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/1"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
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
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

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
            process = subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
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

                await wait_for(probe, timeout=timeout)

    def stop_all(self) -> None:
        for service in self.services:
            service.kill()

    def dump_logs(self) -> str:
        return "\n".join(f"===== {s.name} =====\n{s.log()}" for s in self.services)


@dataclass
class Account:
    """A user made for a test, with a login token signed like a gateway signs one."""

    user_id: str
    username: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def new_account(database_url: str, username: str, admin: bool = False) -> Account:
    """Create a user (as streamspace-admin does) and sign a login token with the gateways' shared secret.

    The secret is the one every gateway started without AUTH_SECRET uses (auth_secrets, made by the
    first to ask), so the token is accepted by every gateway of the test run.
    """

    password = await create_user(database_url, username, admin=admin)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        row = await pool.fetchrow("SELECT id::text, password_hash FROM users WHERE username = $1", username)
        secret = await signing_secret(pool, "")
    finally:
        await pool.close()
    fingerprint = password_fingerprint(secret, row["password_hash"])
    token = sign_token(secret, row["id"], "admin" if admin else "user", int(time.time()) + 3600 * 6, fingerprint)
    return Account(row["id"], username, password, token)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()
