"""The unit tier runs no servers: a test here that asks for the run's environment (and so for the shared
PostgreSQL, Redis or RabbitMQ, or a stack) fails at once, naming the tier it belongs in."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def test_env() -> None:
    pytest.fail("a unit test uses no servers: a test that needs them belongs in tests/integration or tests/e2e")
