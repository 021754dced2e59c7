"""An agent's advertised concurrency limit is respected, and never costs other agents or its own
next command a wait for the sweep (§2 step 2).

Like test_notify, it runs on `slow_sweep_stack` (60 s sweep and ack-deadline checks), so anything
that completes within seconds was woken by a NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import aiohttp
import asyncpg

from e2e.test_end_to_end import post_command, wait_status
from streamspace_common.schemas import CONNECT_PATH
from streamspace_testkit import RunEnv, Stack
from streamspace_tools.admin import create_agent_token

BACKLOG = 600  # more than a claim batch (CLAIM_BATCH_SIZE, 500 by default)


async def test_a_finished_command_frees_the_slot_for_the_next_at_once(
    slow_sweep_stack: Stack,
    stack: Stack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    agent_id: str,
    agent_token: str,
) -> None:
    gateway = slow_sweep_stack.services[0]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway], AGENT_CONCURRENCY="1"))
    nap = {"action": "SLEEP", "payload": {"seconds": 0.2}}
    created = [await post_command(http, gateway.url, agent_id, **nap) for _ in range(3)]
    for command in created:
        await wait_status(http, gateway.url, command["command_id"], "completed", timeout=10)

    rows = await db.fetch(
        "SELECT sent_at, completed_at FROM agent_commands WHERE agent_id = $1 ORDER BY sent_at", agent_id
    )
    assert len(rows) == 3
    for earlier, later in itertools.pairwise(rows):
        assert later["sent_at"] >= earlier["completed_at"]  # one at a time: never two in flight


async def test_one_agents_backlog_never_starves_another_agent(
    slow_sweep_stack: Stack,
    stack: Stack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    test_env: RunEnv,
    agent_id: str,
    agent_token: str,
) -> None:
    """A busy agent (concurrency 1, acknowledging its one command and never finishing it) has a backlog
    older and larger than a claim batch; a command for another agent still goes out at once. (It
    acknowledges so that the test does not race the ack deadline on a slow machine: a command left
    `sent` goes back to pending after ACK_TIMEOUT, and the next one goes out.)"""
    gateway = slow_sweep_stack.services[0]
    busy = f"{agent_id}-busy"
    busy_token = await create_agent_token(test_env.database_url, busy)
    await db.execute(
        "INSERT INTO agent_commands (agent_id, action) SELECT $1, 'PING' FROM generate_series(1, $2)", busy, BACKLOG
    )

    url = gateway.url.replace("http://", "ws://", 1) + CONNECT_PATH
    async with http.ws_connect(url, headers={"Authorization": f"Bearer {busy_token}"}) as ws:
        hello = {"type": "hello", "agent_id": busy, "platform": "local", "version": "t", "instance_id": "i"}
        await ws.send_json({**hello, "concurrency": 1})
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        heartbeats = asyncio.create_task(send_heartbeats(ws))
        try:
            first = await ws.receive_json(timeout=10)  # the busy agent gets exactly one command...
            assert first["action"] == "PING"
            await ws.send_json({"type": "ack", "command_id": first["command_id"]})

            await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
            created = await post_command(http, gateway.url, agent_id, action="PING")
            # ...and the other agent's command is not stuck behind the busy agent's backlog.
            await wait_status(http, gateway.url, created["command_id"], "completed", timeout=10)

            counts = await db.fetch(
                "SELECT status, count(*), max(attempts) AS attempts FROM agent_commands WHERE agent_id = $1 "
                "GROUP BY status ORDER BY status",
                busy,
            )
            assert [tuple(row) for row in counts] == [("acknowledged", 1, 1), ("pending", BACKLOG - 1, 0)]
        finally:
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats


async def send_heartbeats(ws: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        await ws.send_json({"type": "heartbeat"})
        await asyncio.sleep(0.5)
