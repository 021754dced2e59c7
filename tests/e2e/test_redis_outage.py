"""Redis goes away and comes back empty (§3, Redis outage): agent sockets stay open, the gateways
stay ready, commands created meanwhile complete DURING the outage through PostgreSQL (bus.py), Redis
is the path again once it returns, and each service logs the outage once and the recovery once.

Runs against a throwaway redis-server of its own (never the machine's shared one), with a 60 s
dispatcher sweep, so a command that completes within seconds was woken by a NOTIFY, not found by the
sweep.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from e2e.test_end_to_end import post_command, wait_online, wait_status
from streamspace_testkit import RedisServer, Service, Stack, wait_until


@pytest.fixture
def throwaway_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH (the machine's Redis 7 provides it)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def count(service: Service, *words: str) -> int:
    return sum(all(word in line for word in words) for line in service.log().splitlines())


async def routed(http: aiohttp.ClientSession, dispatcher: Service, path: str) -> int:
    async with http.get(dispatcher.metrics_url) as response:
        text = await response.text()
    found = re.search(rf'streamspace_dispatcher_commands_routed_total{{path="{path}"}} (\S+)', text)
    return 0 if found is None else int(float(found.group(1)))


async def ready(http: aiohttp.ClientSession, service: Service) -> bool:
    async with http.get(service.url + "/readyz") as response:
        return response.status == 200


async def test_commands_flow_through_postgresql_while_redis_is_down_and_agents_never_notice(
    stack: Stack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    throwaway_redis: RedisServer,
    agent_id: str,
    agent_token: str,
) -> None:
    redis_env = {"REDIS_URL": throwaway_redis.url}
    holder = stack.gateway("gateway-r1", **redis_env)
    other = stack.gateway("gateway-r2", **redis_env)
    dispatcher = stack.dispatcher("dispatcher-r", SWEEP_INTERVAL="60", **redis_env)
    await stack.ready(holder, other, dispatcher)
    agent = stack.agent(agent_id, agent_token, [holder])
    await stack.ready(agent)
    await wait_online(http, other.url, agent_id, "gateway-r1")

    throwaway_redis.stop()
    created = await post_command(http, other.url, agent_id, action="PING")  # on the replica without the agent
    done = await wait_status(http, other.url, created["command_id"], "completed", timeout=15)
    assert done["delivered_via_pod"] == "gateway-r1" and done["attempts"] == 1
    burst = [  # by hand, as anyone may
        row["command_id"]
        for row in await db.fetch(
            "INSERT INTO agent_commands (agent_id, action) SELECT $1, 'PING' FROM generate_series(1, 200) "
            "RETURNING command_id",
            agent_id,
        )
    ]

    async def all_completed() -> bool:
        statuses = await db.fetch("SELECT status FROM agent_commands WHERE command_id = ANY($1)", burst)
        return [row["status"] for row in statuses] == ["completed"] * len(burst)

    await wait_until(all_completed, timeout=60)
    assert await routed(http, dispatcher, "postgres") >= 201
    assert await routed(http, dispatcher, "redis") == 0
    assert await ready(http, holder) and await ready(http, other)  # a Redis outage empties no Service
    assert count(holder, "dependency_down", "redis") == 1

    throwaway_redis.start()  # back, and empty: every mapping is gone until the gateways re-write them

    async def resubscribed() -> bool:
        return count(holder, "dependency_back", "redis") == 1

    await wait_until(resubscribed, timeout=20)

    async def routed_through_redis_again() -> bool:
        """The dispatcher tries Redis again at most a second after a failure (its first call after the
        restart may still fail on a dead pooled connection): a few commands, each completing."""
        after = await post_command(http, other.url, agent_id, action="PING")
        await wait_status(http, other.url, after["command_id"], "completed", timeout=15)
        return await routed(http, dispatcher, "redis") >= 1

    await wait_until(routed_through_redis_again, timeout=20, interval=0.5)

    assert count(agent, "connected") - count(agent, "disconnected") == 1  # the socket stayed open throughout
    assert count(agent, "disconnected") == 0
    for service in (holder, other, dispatcher):

        async def back(service: Service = service) -> bool:  # each finds Redis again in its own time
            return count(service, "dependency_back") >= 1

        await wait_until(back, timeout=30)
        assert count(service, "dependency_down") == 1, service.log()
        assert count(service, "dependency_back") == 1, service.log()
