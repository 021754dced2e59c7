"""Redis goes away and comes back empty (§3, Redis outage): agent sockets stay open, a command
created meanwhile waits in PostgreSQL and flows once Redis returns, and each service logs the
outage once and the recovery once.

Runs against a throwaway redis-server of its own (never the machine's shared one), with a 60 s
dispatcher sweep, so a command that completes within seconds of Redis returning was woken by a
NOTIFY, not found by the sweep.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator

import aiohttp
import pytest
from support import Service, Stack, free_port, wait_for
from test_end_to_end import post_command, wait_online, wait_status


class RedisServer:
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


async def test_commands_flow_again_when_redis_returns_and_agents_never_notice(
    stack: Stack, http: aiohttp.ClientSession, throwaway_redis: RedisServer, agent_id: str, agent_token: str
) -> None:
    redis_env = {"REDIS_URL": throwaway_redis.url}
    gateway = stack.gateway("gateway-r", **redis_env)
    dispatcher = stack.dispatcher("dispatcher-r", SWEEP_INTERVAL="60", **redis_env)
    await stack.ready(gateway, dispatcher)
    agent = stack.agent(agent_id, agent_token, [gateway])
    await stack.ready(agent)
    await wait_online(http, gateway.url, agent_id, "gateway-r")

    throwaway_redis.stop()
    created = await post_command(http, gateway.url, agent_id, action="PING")  # PostgreSQL only: accepted

    async def outage_noticed() -> bool:
        return count(gateway, "dependency_down", "redis") == 1 and count(dispatcher, "dependency_down") == 1

    await wait_for(outage_noticed, timeout=20)
    await asyncio.sleep(1)  # a few retries pass while Redis is away
    waiting = await wait_status(http, gateway.url, created["command_id"], "pending")
    assert waiting["attempts"] == 0

    throwaway_redis.start()  # back, and empty: every mapping is gone
    done = await wait_status(http, gateway.url, created["command_id"], "completed", timeout=15)
    assert done["delivered_via_pod"] == "gateway-r"

    assert count(agent, "connected") - count(agent, "disconnected") == 1  # the socket stayed open throughout
    assert count(agent, "disconnected") == 0
    for service in (gateway, dispatcher):
        assert count(service, "dependency_down") == 1, service.log()
        assert count(service, "dependency_back") == 1, service.log()
