"""RabbitMQ unreachable (§2 step 6, §3): retries still happen, through the sweep honouring
next_attempt_at; the dispatcher stays ready and logs the outage once; once RabbitMQ is reachable it
schedules retries there again, and no command is lost or run more often than its attempts.

"Unreachable" is a vhost that does not exist yet (the shared broker is never stopped); creating it is
RabbitMQ coming back. A module of its own, so no other dispatcher of the run shares the database.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from e2e.test_end_to_end import post_command, wait_status
from e2e.test_redis_outage import count, ready
from e2e.test_retries import metric
from streamspace_testkit import BASE_RABBITMQ_URL, Stack, rabbitmqctl, wait_until


@pytest.fixture
def missing_vhost() -> Iterator[str]:
    vhost = f"streamspace-missing-{uuid.uuid4().hex[:8]}"
    yield vhost
    with contextlib.suppress(RuntimeError):  # never created: the test failed before RabbitMQ "came back"
        rabbitmqctl("delete_vhost", vhost)


async def test_retries_go_through_the_sweep_while_rabbitmq_is_away_and_through_rabbitmq_once_back(
    stack: Stack, http: aiohttp.ClientSession, missing_vhost: str, agent_id: str, agent_token: str
) -> None:
    url = f"{BASE_RABBITMQ_URL.rstrip('/')}/{missing_vhost}"
    gateway = stack.gateway("gateway-nr")
    dispatcher = stack.dispatcher("dispatcher-nr", RABBITMQ_URL=url)  # the tests' 1 s sweep
    await stack.ready(gateway, dispatcher)
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    failing = {"action": "FAIL", "payload": {"error": "busy", "retryable": True}, "max_attempts": 3}

    during = await post_command(http, gateway.url, agent_id, **failing)
    failed = await wait_status(http, gateway.url, during["command_id"], "failed", timeout=30)
    assert failed["attempts"] == 3
    assert await ready(http, dispatcher)
    assert count(dispatcher, "dependency_down", "rabbitmq") == 1
    assert await metric(http, dispatcher, "streamspace_dispatcher_retries_scheduled_total") == 0

    rabbitmqctl("add_vhost", missing_vhost)
    rabbitmqctl("set_permissions", "-p", missing_vhost, "guest", ".*", ".*", ".*")

    async def back() -> bool:
        return count(dispatcher, "dependency_back", "rabbitmq") == 1

    await wait_until(back, timeout=30)
    after = await post_command(http, gateway.url, agent_id, **failing)
    failed = await wait_status(http, gateway.url, after["command_id"], "failed", timeout=30)
    assert failed["attempts"] == 3
    assert await metric(http, dispatcher, "streamspace_dispatcher_retries_scheduled_total") >= 2
    assert count(dispatcher, "dependency_down", "rabbitmq") == 1
