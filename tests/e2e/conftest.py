"""Fixtures of the end-to-end tier: the session tests' stack (a gateway and a dispatcher as subprocesses)
and an administrator's view of its API with the templates those tests use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamspace_testkit import Api, RunEnv, Stack, templates_admin


@pytest.fixture(scope="module")
async def sessions_stack(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """A gateway and a dispatcher that checks idle sessions every 0.5 s and asks every agent for its
    inventory every 2 s, so auto-hibernation and reconciliation show within a test."""
    running = Stack(test_env, tmp_path_factory.mktemp("sessions"))
    services = [
        running.gateway("gateway-sess"),
        running.dispatcher("dispatcher-sess", IDLE_CHECK_INTERVAL="0.5", RECONCILE_INTERVAL="2"),
    ]
    await running.ready(*services)
    yield running
    running.stop_all()
    print(running.dump_logs())


@pytest.fixture(scope="module")
async def admin_api(sessions_stack: Stack, test_env: RunEnv) -> Api:
    """An administrator, with the templates the tests use: echo (local, docker) and echo-idle (2 s idle)."""
    return await templates_admin(test_env.database_url, sessions_stack.services[0].url)
