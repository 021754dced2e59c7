"""The bulk path (issue 27) through the REST layer, on gateways and a dispatcher in this process:
POST /api/v1/commands creates up to 1,000 commands in one transaction, in order, all or nothing (a bad
item, too many, a deleted agent, a non-admin: nothing stored); one INSERT statement wakes the dispatchers
once, however many rows and agents it has (migration 0015), whether it came from the API or was typed
by hand. The agents here never connect (their commands completing: tests/e2e/test_bulk.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
import pytest

from streamspace_common.keys import DISPATCH_CHANNEL, DISPATCH_EVERY_AGENT
from streamspace_testkit import InProcessStack, RunEnv, new_account
from streamspace_tools.admin import create_agent_token

BULK = 1000


async def post_bulk(http: aiohttp.ClientSession, gateway_url: str, items: list[dict[str, Any]]) -> tuple[int, Any]:
    async with http.post(f"{gateway_url}/api/v1/commands", json={"commands": items}) as response:
        return response.status, await response.json()


async def created_ids(http: aiohttp.ClientSession, gateway_url: str, items: list[dict[str, Any]]) -> list[str]:
    status, body = await post_bulk(http, gateway_url, items)
    assert status == 202, body
    return [created["command_id"] for created in body["commands"]]


async def rows_of(db: asyncpg.Pool, agent_ids: list[str]) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM agent_commands WHERE agent_id = ANY($1)", agent_ids)
    return count


class Wakeups:
    """LISTENs on the dispatchers' channel, as a dispatcher does, and keeps every payload."""

    def __init__(self) -> None:
        self.payloads: list[str] = []

    def on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload)

    async def settle(self, conn: asyncpg.Connection) -> list[str]:
        await conn.execute("SELECT 1")  # a round trip: notifications sent before it are read by now
        await asyncio.sleep(0.5)
        return self.payloads


@pytest.fixture
async def offline_agents(test_env: RunEnv, agent_id: str) -> list[str]:
    """Three registered agents that never connect: nothing but our inserts wakes anybody about them."""
    ids = [f"{agent_id}-{n}" for n in range(3)]
    for one in ids:
        await create_agent_token(test_env.database_url, one)
    return ids


@pytest.mark.parametrize(
    ("index", "change", "status", "field"),
    [
        (3, {"action": "not an action"}, 400, "commands[3].action"),
        (2, {"action": "OPEN_TUNNEL"}, 400, "commands[2].action"),
        (9, {"timeout_seconds": 0}, 400, "commands[9].timeout_seconds"),
        (4, {"surprise": 1}, 400, "commands[4].surprise"),
        (5, {"agent_id": "no-such-agent-anywhere"}, 404, "commands[5].agent_id"),
    ],
)
async def test_a_bad_item_refuses_the_whole_request_naming_it(
    inproc_stack: InProcessStack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    offline_agents: list[str],
    index: int,
    change: dict[str, Any],
    status: int,
    field: str,
) -> None:
    items: list[dict[str, Any]] = [{"agent_id": offline_agents[n % 3], "action": "PING"} for n in range(10)]
    items[index] |= change
    answered, body = await post_bulk(http, inproc_stack.services[0].url, items)
    assert (answered, body["error"]["field"]) == (status, field), body
    assert await rows_of(db, offline_agents) == 0


async def test_1001_commands_are_refused_and_1000_taken(
    inproc_stack: InProcessStack, http: aiohttp.ClientSession, db: asyncpg.Pool, offline_agents: list[str]
) -> None:
    items = [{"agent_id": offline_agents[0], "action": "PING"}] * (BULK + 1)
    answered, body = await post_bulk(http, inproc_stack.services[0].url, items)
    assert (answered, body["error"]["field"]) == (400, "commands"), body
    answered, body = await post_bulk(http, inproc_stack.services[0].url, [])
    assert (answered, body["error"]["field"]) == (400, "commands"), body
    assert await rows_of(db, offline_agents) == 0
    assert len(await created_ids(http, inproc_stack.services[0].url, items[:BULK])) == BULK


async def test_a_deleted_agent_refuses_the_whole_request(
    inproc_stack: InProcessStack, http: aiohttp.ClientSession, db: asyncpg.Pool, offline_agents: list[str]
) -> None:
    await db.execute("UPDATE agents SET deleted_at = now() WHERE agent_id = $1", offline_agents[2])
    items = [{"agent_id": offline_agents[n % 3], "action": "PING"} for n in range(10)]
    answered, body = await post_bulk(http, inproc_stack.services[0].url, items)
    assert (answered, body["error"]["code"], body["error"]["field"]) == (409, "agent_deleted", "commands[2].agent_id")
    assert await rows_of(db, offline_agents) == 0


async def test_the_body_may_pass_the_single_limit_up_to_the_bulk_limit(
    inproc_stack: InProcessStack, http: aiohttp.ClientSession, db: asyncpg.Pool, offline_agents: list[str]
) -> None:
    """1,000 commands with a 200-byte payload each (~250 kB, past MAX_REQUEST_BYTES' 64 KiB) are taken;
    one body past MAX_BULK_REQUEST_BYTES (4 MiB) is 413."""
    items = [{"agent_id": offline_agents[0], "action": "PING", "payload": {"note": "x" * 200}}] * BULK
    assert len(await created_ids(http, inproc_stack.services[0].url, items)) == BULK
    huge = [{"agent_id": offline_agents[1], "action": "PING", "payload": {"note": "x" * (4 * 1024 * 1024)}}]
    answered, body = await post_bulk(http, inproc_stack.services[0].url, huge)
    assert (answered, body["error"]["code"]) == (413, "request_entity_too_large"), body
    assert await rows_of(db, offline_agents[1:]) == 0


async def test_a_non_admin_is_refused(
    inproc_stack: InProcessStack, test_env: RunEnv, db: asyncpg.Pool, offline_agents: list[str]
) -> None:
    user = await new_account(test_env.database_url, f"bulk-user-{test_env.run_id}")
    async with aiohttp.ClientSession(headers=user.headers) as http:
        answered, body = await post_bulk(
            http, inproc_stack.services[0].url, [{"agent_id": offline_agents[0], "action": "PING"}]
        )
    assert answered == 403, body
    assert await rows_of(db, offline_agents) == 0


async def test_one_wakeup_per_bulk_commit_and_per_statement_by_hand(
    inproc_stack: InProcessStack,
    test_env: RunEnv,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    offline_agents: list[str],
) -> None:
    """No dispatcher claims for these offline agents, so none is in a streak: every statement NOTIFYs."""
    wakeups = Wakeups()
    conn = await asyncpg.connect(test_env.database_url)
    try:
        await conn.add_listener(DISPATCH_CHANNEL, wakeups.on_notify)
        ours = {*offline_agents, DISPATCH_EVERY_AGENT}
        one_agent = [{"agent_id": offline_agents[0], "action": "PING"}] * BULK
        await created_ids(http, inproc_stack.services[0].url, one_agent)
        assert [p for p in await wakeups.settle(conn) if p in ours] == [offline_agents[0]]
        wakeups.payloads.clear()
        three_agents = [{"agent_id": offline_agents[n % 3], "action": "PING"} for n in range(BULK)]
        await created_ids(http, inproc_stack.services[0].url, three_agents)
        assert [p for p in await wakeups.settle(conn) if p in ours] == [DISPATCH_EVERY_AGENT]
        wakeups.payloads.clear()
        await db.execute(
            "INSERT INTO agent_commands (agent_id, action) "
            "SELECT ($1::text[])[1 + n % 3], 'PING' FROM generate_series(1, 500) n",
            offline_agents,
        )
        assert [p for p in await wakeups.settle(conn) if p in ours] == [DISPATCH_EVERY_AGENT]
    finally:
        await conn.close()
