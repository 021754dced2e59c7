"""The dispatcher is woken by NOTIFY, not by its sweep (§2 steps 1-3).

This module runs its own dispatcher with a 60 s sweep and no other dispatcher alive (module-scoped
stacks of other modules are torn down by then), so a command completing within seconds can only
have been woken by a NOTIFY: of the insert, or of the agent coming online.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from support import RunEnv, Service, Stack
from test_end_to_end import post_command, wait_status

NO_SWEEP = {"SWEEP_INTERVAL": "60"}


@pytest.fixture(scope="module")
async def slow_sweep_stack(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    running = Stack(test_env, tmp_path_factory.mktemp("notify"))
    gateway = running.gateway("gateway-n")
    dispatcher = running.dispatcher("dispatcher-n", **NO_SWEEP)
    await running.ready(gateway, dispatcher)
    yield running
    running.stop_all()
    print(running.dump_logs())


def gateway_of(stack: Stack) -> Service:
    return stack.services[0]


async def test_hand_inserted_command_is_woken_by_notify(
    slow_sweep_stack: Stack,
    stack: Stack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    agent_id: str,
    agent_token: str,
) -> None:
    gateway = gateway_of(slow_sweep_stack)
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    command_id = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action) VALUES ($1, 'PING') RETURNING command_id", agent_id
    )
    await wait_status(http, gateway.url, command_id, "completed", timeout=10)


async def test_waiting_command_goes_out_when_its_agent_registers(
    slow_sweep_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = gateway_of(slow_sweep_stack)
    created = await post_command(http, gateway.url, agent_id, action="PING")
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    done = await wait_status(http, gateway.url, created["command_id"], "completed", timeout=10)
    assert done["attempts"] == 1
