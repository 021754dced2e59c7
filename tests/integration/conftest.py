"""Fixtures of the integration tier: services in this process (`streamspace_testkit.inprocess`), on the
real PostgreSQL, Redis and RabbitMQ of the run (tests/conftest.py's `test_env`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamspace_testkit import InProcessStack, RunEnv


@pytest.fixture(scope="module")
async def inproc_stack(test_env: RunEnv) -> AsyncIterator[InProcessStack]:
    """Two gateways and a dispatcher in this process, shared by the tests of one module (the in-process
    `shared_stack`): `services[0]` and `services[1]` are the gateways, `services[2]` the dispatcher."""
    async with InProcessStack(test_env) as running:
        await running.gateway("gateway-a")
        await running.gateway("gateway-b")
        await running.dispatcher()
        yield running
