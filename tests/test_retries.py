"""Commands that are sent but never acknowledged are retried, then failed (§2 step 6, sweep path).

The "silent agent" here is a real WebSocket client that registers and then ignores commands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import msgspec
from support import Stack
from test_end_to_end import post_command, wait_status

from streamspace_common.schemas import Command, Hello, Welcome


@asynccontextmanager
async def silent_agent(
    http: aiohttp.ClientSession, gateway_url: str, agent_id: str, token: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.ws_connect(f"{gateway_url}/api/v1/agents/connect", headers=headers) as ws:
        hello = Hello(agent_id=agent_id, platform="local", version="test", instance_id="silent")
        await ws.send_str(msgspec.json.encode(hello).decode())
        welcome = msgspec.json.decode(await ws.receive_str(timeout=10), type=Welcome)
        assert welcome.pod
        yield ws


async def test_unacknowledged_command_is_retried_and_completes_on_the_next_agent(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a = shared_stack.services[0]
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
    shared_stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a = shared_stack.services[0]
    async with silent_agent(http, gateway_a.url, agent_id, agent_token):
        created = await post_command(http, gateway_a.url, agent_id, action="PING", max_attempts=1)
        failed = await wait_status(http, gateway_a.url, created["command_id"], "failed")
    assert failed["attempts"] == 1
    assert failed["error_message"] == f"no acknowledgement from agent {agent_id} after 1 attempt(s)"
    assert failed["completed_at"] is not None
