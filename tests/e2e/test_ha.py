"""Agent HA (§3, issue 13 step 4): replicas of one agent id connected to any gateways; exactly one is
active, chosen by a lease in PostgreSQL whose epoch rises on every change; no replica kicks another;
the active one killed, a standby takes over and the work in flight goes to it; a demoted replica's
results are refused. Real gateways, dispatcher and agent processes; raw WebSockets where a test speaks
for a replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import msgspec

from e2e.test_end_to_end import post_command, wait_status
from e2e.test_pipeline import count_event
from streamspace_common import closecodes
from streamspace_common.schemas import (
    CONNECT_PATH,
    FEATURE_CONFIRM,
    FEATURE_HA,
    Command,
    GatewayFrame,
    Hello,
    Result,
    Role,
    Welcome,
)
from streamspace_testkit import Service, Stack, get_json, wait_until


async def instances(http: aiohttp.ClientSession, gateway: Service, agent_id: str) -> dict[str, Any]:
    agent: dict[str, Any] = await get_json(http, f"{gateway.url}/api/v1/agents/{agent_id}")
    return agent


async def test_three_replicas_started_at_once_connect_once_each_and_one_is_active(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a, gateway_b, _ = shared_stack.services
    replicas = [
        stack.agent(agent_id, agent_token, [gateway_a, gateway_b], name=f"replica-{i}")
        if i % 2 == 0
        else stack.agent(agent_id, agent_token, [gateway_b, gateway_a], name=f"replica-{i}")
        for i in range(3)
    ]
    await stack.ready(*replicas)

    async def three_connected() -> dict[str, Any] | None:
        agent = await instances(http, gateway_a, agent_id)
        return agent if len(agent["instances"]) == 3 else None

    agent = await wait_until(three_connected)
    assert sorted(i["role"] for i in agent["instances"]) == ["active", "standby", "standby"]
    assert agent["epoch"] == 1 and {i["gateway_pod"] for i in agent["instances"]} == {"gateway-a", "gateway-b"}
    done = await post_command(http, gateway_b.url, agent_id, action="PING")
    await wait_status(http, gateway_b.url, done["command_id"], "completed")
    await asyncio.sleep(6)  # three heartbeat intervals: a thrash would show as reconnects by now
    assert [count_event(replica, "connected") for replica in replicas] == [1, 1, 1]
    assert [count_event(replica, "disconnected") for replica in replicas] == [0, 0, 0]
    assert (await instances(http, gateway_a, agent_id))["epoch"] == 1


async def test_killing_the_active_replica_promotes_a_standby_and_its_work_completes(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    gateway_a, gateway_b, _ = shared_stack.services
    first = stack.agent(agent_id, agent_token, [gateway_a], name="first")
    await stack.ready(first)
    await wait_until(lambda: lease_epoch(db, agent_id))
    second = stack.agent(agent_id, agent_token, [gateway_b], name="second")
    await stack.ready(second)

    async def standing_by() -> bool:
        return len((await instances(http, gateway_a, agent_id))["instances"]) == 2

    await wait_until(standing_by)
    in_flight = [
        await post_command(http, gateway_b.url, agent_id, action="SLEEP", payload={"seconds": 30}) for _ in range(3)
    ]
    for command in in_flight:
        await wait_status(http, gateway_b.url, command["command_id"], "acknowledged")
    killed_at = time.monotonic()
    first.kill()
    after = await post_command(http, gateway_b.url, agent_id, action="PING")
    await wait_status(http, gateway_b.url, after["command_id"], "completed", timeout=20)
    print(f"HA: next command completed {time.monotonic() - killed_at:.3f} s after kill -9 of the active replica")
    agent = await instances(http, gateway_a, agent_id)
    assert agent["epoch"] == 2 and [i["role"] for i in agent["instances"]] == ["active"]
    for command in in_flight:  # redelivered to the new active replica at once (not at their 300 s deadline)
        row = await wait_status(http, gateway_b.url, command["command_id"], "completed", timeout=60)
        assert row["attempts"] == 2 and row["delivered_via_pod"] == "gateway-b"


async def lease_epoch(db: asyncpg.Pool, agent_id: str) -> int | None:
    epoch: int | None = await db.fetchval("SELECT epoch FROM agent_leases WHERE agent_id = $1", agent_id)
    return epoch


@asynccontextmanager
async def replica(
    http: aiohttp.ClientSession, gateway: Service, agent_id: str, token: str, instance_id: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A raw replica that announces HA; it answers only what the test tells it to."""
    headers = {"Authorization": f"Bearer {token}"}
    async with http.ws_connect(f"{gateway.url}{CONNECT_PATH}", headers=headers) as ws:
        hello = Hello(
            agent_id=agent_id,
            platform="local",
            version="test",
            instance_id=instance_id,
            features=[FEATURE_CONFIRM, FEATURE_HA],
        )
        await ws.send_str(msgspec.json.encode(hello).decode())
        assert isinstance(decode(await ws.receive_str(timeout=10)), Welcome)
        yield ws


def decode(text: str) -> Any:
    return msgspec.json.decode(text, type=GatewayFrame)


async def next_frame(ws: aiohttp.ClientWebSocketResponse, kind: type) -> Any:
    while True:
        frame = decode(await ws.receive_str(timeout=15))
        if isinstance(frame, kind):
            return frame


async def test_a_result_from_a_demoted_replica_is_refused_and_the_new_active_one_finishes_it(
    shared_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    gateway_a, gateway_b, _ = shared_stack.services
    async with replica(http, gateway_a, agent_id, agent_token, "replica-a") as a:
        assert await next_frame(a, Role) == Role(role="active", epoch=1)
        async with replica(http, gateway_b, agent_id, agent_token, "replica-b") as b:
            assert await next_frame(b, Role) == Role(role="standby", epoch=1)
            created = await post_command(http, gateway_a.url, agent_id, action="PING")
            command = await next_frame(a, Command)
            assert (command.command_id, command.epoch) == (created["command_id"], 1)
            await a.close()  # replica A goes away before answering: B takes over, the command goes to it
            assert await next_frame(b, Role) == Role(role="active", epoch=2)
            redelivered = await next_frame(b, Command)
            assert (redelivered.command_id, redelivered.epoch) == (created["command_id"], 2)

            async with replica(http, gateway_a, agent_id, agent_token, "replica-a") as late:  # A is back
                assert await next_frame(late, Role) == Role(role="standby", epoch=2)
                stale = Result(command_id=created["command_id"], status="completed", result={"from": "a"})
                await late.send_str(msgspec.json.encode(stale).decode())
                await asyncio.sleep(1.5)  # the writer has flushed it by now
                row = await db.fetchrow(
                    "SELECT status, result FROM agent_commands WHERE command_id = $1", created["command_id"]
                )
                assert row["status"] == "sent" and row["result"] is None  # refused: A's epoch is over

            fresh = Result(command_id=created["command_id"], status="completed", result={"from": "b"})
            await b.send_str(msgspec.json.encode(fresh).decode())
            done = await wait_status(http, gateway_a.url, created["command_id"], "completed")
            assert done["result"] == {"from": "b"}


async def test_revoking_an_agent_token_closes_the_sockets_that_use_it(
    shared_stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = shared_stack.services[0]
    async with replica(http, gateway, agent_id, agent_token, "replica-r") as ws:
        assert isinstance(await next_frame(ws, Role), Role)
        async with http.get(f"{gateway.url}/api/v1/agents/{agent_id}/tokens") as response:
            (token,) = (await response.json())["tokens"]
        async with http.delete(f"{gateway.url}/api/v1/agents/{agent_id}/tokens/{token['id']}") as response:
            assert response.status == 204
        deadline = time.monotonic() + 20
        while not ws.closed and time.monotonic() < deadline:  # heartbeats: only the revocation may close it
            await ws.send_str('{"type": "heartbeat"}')
            with contextlib.suppress(TimeoutError):
                await ws.receive(timeout=0.5)
        assert ws.close_code == closecodes.TOKEN_REVOKED
