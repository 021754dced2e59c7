"""The dispatcher is woken by NOTIFY, not by its sweep (§2 steps 1-3).

Its stack (`slow_sweep_stack`) sweeps only every 60 s, so a command completing within seconds can
only have been woken by a NOTIFY: of the insert, or of the agent coming online.
"""

from __future__ import annotations

import aiohttp
import asyncpg

from e2e.test_end_to_end import post_command, wait_status
from streamspace_testkit import Stack


async def test_hand_inserted_command_is_woken_by_notify(
    slow_sweep_stack: Stack,
    stack: Stack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    agent_id: str,
    agent_token: str,
) -> None:
    gateway = slow_sweep_stack.services[0]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    command_id = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action) VALUES ($1, 'PING') RETURNING command_id", agent_id
    )
    await wait_status(http, gateway.url, command_id, "completed", timeout=10)


async def test_waiting_command_goes_out_when_its_agent_registers(
    slow_sweep_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = slow_sweep_stack.services[0]
    created = await post_command(http, gateway.url, agent_id, action="PING")
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    done = await wait_status(http, gateway.url, created["command_id"], "completed", timeout=10)
    assert done["attempts"] == 1
