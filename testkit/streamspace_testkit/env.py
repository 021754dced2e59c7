"""The per-run isolation: each test or bench run gets its own PostgreSQL database (created, migrated,
dropped), its own Redis key and channel prefix, and its own RabbitMQ vhost, so concurrent runs never see
each other's data. `open_run_data`/`drop_run_data` make and remove all three; `drop_database` is the one
place a database is dropped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio

from streamspace_tools.migrate import create_database_if_missing, migrate

BASE_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BASE_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/1")
BASE_RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
HEARTBEAT_INTERVAL = "2"  # short, so staleness and TTLs show within a test; never below 1 s on a busy CI box


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def drop_database(url: str) -> None:
    """Drop the database `url` names (if it exists), ending its sessions; connects to `postgres` on the
    same server to do it."""
    conn = await asyncpg.connect(url, database="postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')
    finally:
        await conn.close()


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


async def open_run_data(env: RunEnv, vhost: bool = True) -> None:
    """Create and migrate the run's database and (unless `vhost` is False) its RabbitMQ vhost."""
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    if vhost:
        rabbitmqctl("add_vhost", env.vhost)
        rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")


async def drop_run_data(env: RunEnv, vhost: bool = True) -> None:
    """Remove what `open_run_data` made and every Redis key under the run's prefix."""
    if vhost:
        rabbitmqctl("delete_vhost", env.vhost)
    await drop_database(env.database_url)
    client = redis.asyncio.Redis.from_url(env.redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{env.redis_prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
