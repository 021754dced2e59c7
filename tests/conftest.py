"""The tiers (a marker per folder) and the fixtures every tier shares: the isolated test environment, a
database pool, accounts, and real service stacks (subprocesses; tests/integration/conftest.py has the
in-process ones).

Tiers: tests/unit (no servers), tests/integration (the real PostgreSQL, Redis and RabbitMQ; services in
this process), tests/e2e (service subprocesses, Docker, Chromium, the bench and soak smoke runs),
tests/chaos (throwaway servers killed and restarted). Each test gets its folder's marker, so
`pytest -m "unit or integration"` selects like `pytest tests/unit tests/integration`."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio

from streamspace_common.db import create_pool
from streamspace_testkit import (
    SAMPLE_IMAGE,
    Account,
    RunEnv,
    Stack,
    drop_run_data,
    new_account,
    new_test_env,
    open_run_data,
    release,
    sweep_stale,
)
from streamspace_tools.admin import create_agent_token

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "chaos")  # folders under tests/, and their markers (pyproject.toml)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The safety net's sweep: kill what runs of pytest or bench that were killed left behind."""
    sweep_stale()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    release()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier: the folder under tests/ it lives in."""
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        assert tier in TIERS, f"{item.nodeid}: every test lives in a tier folder, one of {TIERS}"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def test_env() -> Iterator[RunEnv]:
    env = new_test_env()
    asyncio.run(open_run_data(env))
    yield env
    asyncio.run(drop_run_data(env))


@pytest.fixture(scope="session")
async def db(test_env: RunEnv) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(test_env.database_url)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis_client(test_env: RunEnv) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(test_env.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def admin(test_env: RunEnv) -> Account:
    """An administrator of this test run, with a login token every gateway of the run accepts."""
    return await new_account(test_env.database_url, f"admin-{test_env.run_id}", admin=True)


@pytest.fixture(scope="session")
def admin_token(admin: Account) -> str:
    return admin.token


@pytest.fixture
async def http(admin_token: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that sends the admin's token with every request (a request may override it)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as session:
        yield session


@pytest.fixture
async def anon_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without credentials."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def stack(test_env: RunEnv, tmp_path: Path) -> Iterator[Stack]:
    """Processes started by one test; killed after it, their logs printed (shown on failure)."""
    running = Stack(test_env, tmp_path)
    yield running
    running.stop_all()
    print(running.dump_logs())


@pytest.fixture(scope="module")
async def shared_stack(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Two gateways and a dispatcher shared by the tests of one module."""
    running = Stack(test_env, tmp_path_factory.mktemp("stack"))
    services = [running.gateway("gateway-a"), running.gateway("gateway-b"), running.dispatcher()]
    await running.ready(*services)
    yield running
    running.stop_all()
    print(running.dump_logs())


@pytest.fixture(scope="module")
async def slow_sweep_stack(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway and a dispatcher whose sweep (and ack-deadline check) runs only every 60 s.

    With no other dispatcher alive (other modules' stacks are torn down by then), a command that
    completes within seconds was woken by a NOTIFY, not found by the sweep.
    """
    running = Stack(test_env, tmp_path_factory.mktemp("slow-sweep"))
    services = [running.gateway("gateway-s"), running.dispatcher("dispatcher-s", SWEEP_INTERVAL="60")]
    await running.ready(*services)
    yield running
    running.stop_all()
    print(running.dump_logs())


@pytest.fixture
def agent_id(request: pytest.FixtureRequest) -> str:
    """A fresh agent id per test, so tests sharing a database never see each other's rows."""
    return f"agent-{request.node.name[:40].replace('[', '-').replace(']', '')}-{id(request) % 100000}"


@pytest.fixture
async def agent_token(test_env: RunEnv, agent_id: str) -> str:
    return await create_agent_token(test_env.database_url, agent_id)


@pytest.fixture(scope="session")
def sample_image() -> str:
    """A running Docker Engine and the sample image, built once per run (kept between runs) for every
    docker test module; skips them where no engine can start."""
    root = TESTS.parent
    engine = subprocess.run(["bash", str(root / "scripts/docker-engine")], capture_output=True, text=True)
    if engine.returncode != 0:
        pytest.skip(f"no Docker Engine could be started: {engine.stderr.strip() or engine.stdout.strip()}")
    env = {**os.environ, "IMAGE": SAMPLE_IMAGE}
    subprocess.run(["bash", str(root / "scripts/build-sample-images"), "echo"], check=True, env=env)
    return SAMPLE_IMAGE
