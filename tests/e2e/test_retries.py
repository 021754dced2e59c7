"""Retries (§2 step 6): commands never acknowledged, failed on purpose with `retryable`, or not finished
within their completion deadline are retried through RabbitMQ (the shared broker, this run's vhost),
then failed with a readable reason.

Most tests run on a dispatcher whose sweep runs only every 60 s: a retry that comes back within
seconds came through RabbitMQ, not the sweep. The "silent agent" is a real WebSocket client that
registers and then ignores commands.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import msgspec

from e2e.test_end_to_end import post_command, wait_status
from streamspace_common.schemas import CONNECT_PATH, Command, Hello, Welcome
from streamspace_testkit import Service, Stack, wait_until


@asynccontextmanager
async def silent_agent(
    http: aiohttp.ClientSession, gateway_url: str, agent_id: str, token: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.ws_connect(f"{gateway_url}{CONNECT_PATH}", headers=headers) as ws:
        hello = Hello(agent_id=agent_id, platform="local", version="test", instance_id="silent")
        await ws.send_str(msgspec.json.encode(hello).decode())
        welcome = msgspec.json.decode(await ws.receive_str(timeout=10), type=Welcome)
        assert welcome.pod
        yield ws


async def metric(http: aiohttp.ClientSession, service: Service, name: str) -> float:
    async with http.get(service.metrics_url) as response:
        text = await response.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return 0.0 if found is None else float(found.group(1))


async def test_unacknowledged_command_is_retried_and_completes_on_the_next_agent(
    slow_sweep_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a = slow_sweep_stack.services[0]
    async with silent_agent(http, gateway_a.url, agent_id, agent_token) as ws:
        created = await post_command(http, gateway_a.url, agent_id, action="PING")
        received = msgspec.json.decode(await ws.receive_str(timeout=10), type=Command)
        assert received.command_id == created["command_id"]
        # no ack: the deadline (ACK_TIMEOUT=2 in tests) passes and the row goes back to pending
        await wait_status(http, gateway_a.url, created["command_id"], "pending")

    await stack.ready(stack.agent(agent_id, agent_token, [gateway_a]))
    done = await wait_status(http, gateway_a.url, created["command_id"], "completed")
    assert done["attempts"] == 2


async def test_command_fails_readably_when_attempts_run_out(
    slow_sweep_stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a = slow_sweep_stack.services[0]
    async with silent_agent(http, gateway_a.url, agent_id, agent_token):
        created = await post_command(http, gateway_a.url, agent_id, action="PING", max_attempts=1)
        failed = await wait_status(http, gateway_a.url, created["command_id"], "failed")
    assert failed["attempts"] == 1
    assert failed["error_message"] == f"no acknowledgement from agent {agent_id} after 1 attempt(s)"
    assert failed["completed_at"] is not None


async def test_a_retryable_failure_comes_back_through_rabbitmq_not_the_sweep(
    slow_sweep_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway, dispatcher = slow_sweep_stack.services
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    scheduled = await metric(http, dispatcher, "streamspace_dispatcher_retries_scheduled_total")
    payload = {"error": "the engine is busy", "retryable": True}
    created = await post_command(http, gateway.url, agent_id, action="FAIL", payload=payload, max_attempts=3)
    # Backoffs of 0.5-1 s and 1-2 s: with a 60 s sweep, only RabbitMQ brings it back this soon.
    failed = await wait_status(http, gateway.url, created["command_id"], "failed", timeout=30)
    assert failed["attempts"] == 3 and failed["error_message"] == "the engine is busy"
    assert await metric(http, dispatcher, "streamspace_dispatcher_retries_scheduled_total") >= scheduled + 2


async def test_a_command_not_finished_within_its_timeout_is_retried_then_failed_with_the_reason(
    slow_sweep_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = slow_sweep_stack.services[0]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    slow = {"action": "SLEEP", "payload": {"seconds": 30}, "timeout_seconds": 1}
    failed_once = await post_command(http, gateway.url, agent_id, max_attempts=1, **slow)
    done = await wait_status(http, gateway.url, failed_once["command_id"], "failed", timeout=20)
    assert done["attempts"] == 1 and done["acknowledged_at"] is not None
    assert re.fullmatch(
        rf"agent {agent_id} acknowledged at \S+Z and did not finish within 1 s, after 1 attempt\(s\)",
        done["error_message"],
    ), done["error_message"]

    # With attempts left it goes out again; the agent, still running it, answers once it is done. It runs
    # 5 s, so the redelivery has 4 s past the 1 s deadline (2 s was missed once in a loaded CI-like run).
    retried = await post_command(http, gateway.url, agent_id, action="SLEEP", payload={"seconds": 5}, timeout_seconds=1)
    completed = await wait_status(http, gateway.url, retried["command_id"], "completed", timeout=30)
    assert completed["attempts"] >= 2


async def test_1000_commands_nobody_acknowledges_all_fail_after_exactly_their_attempts(
    slow_sweep_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    gateway, dispatcher = slow_sweep_stack.services
    scheduled = await metric(http, dispatcher, "streamspace_dispatcher_retries_scheduled_total")
    async with silent_agent(http, gateway.url, agent_id, agent_token) as ws:
        await db.execute(
            "INSERT INTO agent_commands (agent_id, action, max_attempts) "
            "SELECT $1, 'PING', 3 FROM generate_series(1, 1000)",
            agent_id,
        )
        received = 0

        async def all_closed() -> bool:
            nonlocal received
            await ws.send_str('{"type": "heartbeat"}')  # alive, just never acknowledging
            while True:  # keep reading (and ignoring) what the gateway sends
                try:
                    await ws.receive_str(timeout=0.01)
                    received += 1
                except TimeoutError:
                    break
            rows = await db.fetch(
                "SELECT status, attempts, count(*) FROM agent_commands WHERE agent_id = $1 GROUP BY 1, 2", agent_id
            )
            return [tuple(row) for row in rows] == [("failed", 3, 1000)]

        await wait_until(all_closed, timeout=120, interval=0.2)
    assert received >= 3000  # each attempt really went out
    async with http.get(dispatcher.metrics_url) as response:
        lateness = [line for line in (await response.text()).splitlines() if "retry_lateness_seconds_bucket" in line]
    print("retry lateness (cumulative buckets):", lateness)
    # 2,000 waits in all. A wait that is already due when a claim round runs (any other row's NOTIFY
    # starts one) is claimed straight away, before the scheduler put it on a queue: by design, and more
    # often on a loaded machine (1,932 of 2,000 were scheduled in one CI run). Most go through RabbitMQ.
    assert await metric(http, dispatcher, "streamspace_dispatcher_retries_scheduled_total") >= scheduled + 1000
