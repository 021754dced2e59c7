"""The bulk path (issue 27) with real agents: POST /api/v1/commands creates up to 1,000 commands in one
transaction, in order, and every one completes (the burst: test_bulk_burst.py; the requests' refusals
and the wake-ups: tests/integration/test_bulk_requests.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
from integration.test_bulk_requests import created_ids, offline_agents

from streamspace_testkit import RunEnv, Stack, wait_until
from streamspace_tools.admin import create_agent_token

__all__ = ["offline_agents"]  # a fixture, imported to be used

# the services' defaults, as the chaos load test runs them (tests/chaos/test_load.py says why)
LOAD_SETTINGS = {"HEARTBEAT_INTERVAL": "10", "ACK_TIMEOUT": "10"}


async def wait_completed(db: asyncpg.Pool, ids: list[str], timeout: float) -> None:
    async def done() -> bool:
        open_rows = await db.fetchval(
            "SELECT count(*) FROM agent_commands WHERE command_id = ANY($1) AND status <> 'completed'", ids
        )
        return bool(open_rows == 0)

    await wait_until(done, timeout=timeout, interval=0.5)


async def test_ids_come_back_in_order_and_every_command_completes(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    gateway = shared_stack.services[0]
    await stack.ready(stack.agent(agent_id, agent_token, [shared_stack.services[1]]))
    items: list[dict[str, Any]] = [{"agent_id": agent_id, "action": "PING", "payload": {"n": n}} for n in range(50)]
    items[7] |= {"session_id": "bulk-session", "timeout_seconds": 30.0}  # 30.0: an integer to JSON
    ids = await created_ids(http, gateway.url, items)
    assert len(ids) == len(set(ids)) == 50
    rows = await db.fetch(
        "SELECT command_id, payload, session_id, timeout_seconds FROM agent_commands WHERE command_id = ANY($1)", ids
    )
    by_id = {row["command_id"]: row for row in rows}
    assert [by_id[command_id]["payload"] for command_id in ids] == [{"n": n} for n in range(50)]
    assert (by_id[ids[7]]["session_id"], by_id[ids[7]]["timeout_seconds"]) == ("bulk-session", 30)
    audited = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'command.create' AND target = ANY($1)", ids
    )
    assert audited == 50
    await wait_completed(db, ids, timeout=60)


async def test_2000_rows_inserted_by_hand_in_one_statement_all_complete(
    slow_sweep_stack: Stack, stack: Stack, test_env: RunEnv, db: asyncpg.Pool, agent_id: str
) -> None:
    """Two agents in one INSERT ... SELECT: one '*' wake-up. The dispatcher sweeps only every 60 s, so
    finishing well within that proves the wake-up was acted on."""
    gateway = slow_sweep_stack.services[0]
    agent_ids = [f"{agent_id}-a", f"{agent_id}-b"]
    for one in agent_ids:
        token = await create_agent_token(test_env.database_url, one)
        stack.agent(one, token, [gateway], **LOAD_SETTINGS)
    await stack.ready(*stack.services)
    await wait_until(lambda: online(db, agent_ids), timeout=30)
    await asyncio.sleep(3.0)  # the rounds their coming online started are over: only the INSERT's wake-up is left
    ids = [
        row["command_id"]
        for row in await db.fetch(
            "INSERT INTO agent_commands (agent_id, action) "
            "SELECT ($1::text[])[1 + n % 2], 'PING' FROM generate_series(1, 2000) n RETURNING command_id",
            agent_ids,
        )
    ]
    await wait_completed(db, ids, timeout=45)


async def online(db: asyncpg.Pool, agent_ids: list[str]) -> bool:
    count = await db.fetchval("SELECT count(*) FROM agents WHERE agent_id = ANY($1) AND status = 'online'", agent_ids)
    return bool(count == len(agent_ids))
