"""The agent <-> gateway frame pipeline under load and across failures (§2 step 5, issue 13).

Real gateway, dispatcher and agent processes; raw WebSockets where a test speaks for an agent.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg
from support import RunEnv, Service, Stack, wait_for

BURST = int(os.environ.get("PIPELINE_BURST", "10000"))
CLIENTS = 20
CONNECT_PATH = "/api/v1/agents/connect"


async def open_rows(db: asyncpg.Pool, agent_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM agent_commands WHERE agent_id = $1 AND status IN ('pending', 'sent', 'acknowledged')",
        agent_id,
    )
    return count


async def agent_online(db: asyncpg.Pool, agent_id: str, pod: str | None = None) -> bool:
    row = await db.fetchrow("SELECT status, gateway_pod FROM agents WHERE agent_id = $1", agent_id)
    return row is not None and row["status"] == "online" and (pod is None or row["gateway_pod"] == pod)


def count_event(service: Service, event: str) -> int:
    """Lines of a console-format log whose event is `event` (structlog pads the event name)."""
    return sum(1 for line in service.log().splitlines() if line.split("]", 1)[-1].split()[:1] == [event])


async def test_a_burst_from_20_sql_clients_is_delivered_once_each_without_a_disconnect(
    stack: Stack, db: asyncpg.Pool, test_env: RunEnv, agent_id: str, agent_token: str
) -> None:
    """10,000 commands for one agent, inserted by 20 concurrent SQL clients: every one completes on its
    first delivery, the agent's socket is never dropped, and nothing stays open. Before the batched
    writer, the gateway wrote each ack and result with its own commit while not reading the socket, so
    the agent's pings went unanswered, the socket died (1006) and thousands of commands went twice.

    The dispatcher runs with the default ack deadline (10 s), not the tests' 2 s."""
    gateway = stack.gateway("gateway-burst")
    dispatcher = stack.dispatcher("dispatcher-burst", ACK_TIMEOUT="10")
    await stack.ready(gateway, dispatcher)
    agent = stack.agent(agent_id, agent_token, [gateway])
    await stack.ready(agent)
    await wait_for(lambda: agent_online(db, agent_id))

    clients = [await asyncpg.connect(test_env.database_url) for _ in range(CLIENTS)]
    try:
        share = BURST // CLIENTS
        await asyncio.gather(
            *(
                client.executemany(
                    "INSERT INTO agent_commands (agent_id, action) VALUES ($1, 'PING')", [(agent_id,)] * share
                )
                for client in clients
            )
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients))

    async def all_closed() -> bool:
        return await open_rows(db, agent_id) == 0

    await wait_for(all_closed, timeout=150, interval=0.5)
    rows = await db.fetch(
        "SELECT status, attempts, count(*) FROM agent_commands WHERE agent_id = $1 GROUP BY 1, 2", agent_id
    )
    assert [tuple(row) for row in rows] == [("completed", 1, share * CLIENTS)]
    assert count_event(agent, "connected") == 1, agent.log()[-5000:]
    assert count_event(agent, "disconnected") == 0
    assert count_event(gateway, "agent_disconnected") == 0
