"""An agent's lifecycle (operations, item 2): drain (DELETE /api/v1/agents/{id}), commands that expire,
sessions lost with an agent gone past AGENT_LOST_AFTER, and a cancel reaching a command that runs.

Real processes: a gateway and a dispatcher (reconcile round every second, AGENT_LOST_AFTER=5 s), real
agents or a real WebSocket client that says hello and nothing else (an agent without CANCEL_COMMAND nor
INVENTORY_SESSIONS: the previous release, as far as these tests go). Sessions of the drain and lost tests
are rows written here: what is tested is what becomes of them, not how a driver runs them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from e2e.test_end_to_end import post_command, wait_online, wait_status
from e2e.test_retries import silent_agent
from streamspace_common import closecodes
from streamspace_common.schemas import CONNECT_PATH, Heartbeat, Hello
from streamspace_common.tokens import hash_token, new_token
from streamspace_testkit import RunEnv, Service, Stack, get_json, new_account, wait_until
from streamspace_tools.admin import AdminError, create_agent_token

LOST_AFTER = 5


@pytest.fixture(scope="module")
async def lifecycle_stack(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    running = Stack(test_env, tmp_path_factory.mktemp("lifecycle"))
    services = [
        running.gateway("gateway-life"),
        running.dispatcher("dispatcher-life", RECONCILE_INTERVAL="1", AGENT_LOST_AFTER=str(LOST_AFTER)),
    ]
    await running.ready(*services)
    yield running
    running.stop_all()
    print(running.dump_logs())


@pytest.fixture
def gateway(lifecycle_stack: Stack) -> Service:
    return lifecycle_stack.services[0]


async def session_on(db: asyncpg.Pool, database_url: str, agent_id: str, state: str = "running") -> str:
    """A session row on `agent_id` (what placement and the agent's report would have written)."""
    owner = await new_account(database_url, f"life-{uuid.uuid4().hex[:8]}")
    await db.execute(
        "INSERT INTO agents (agent_id) VALUES ($1) ON CONFLICT DO NOTHING", agent_id
    )  # a silent agent's row exists already; a real one's too
    session_id: uuid.UUID = await db.fetchval(
        "INSERT INTO sessions (user_id, template, agent_id, platform, state, endpoint_host, endpoint_port)"
        " VALUES ($1::uuid, 'echo', $2, 'local', $3, '127.0.0.1', 9) RETURNING id",
        owner.user_id,
        agent_id,
        state,
    )
    return str(session_id)


async def json_call(
    http: aiohttp.ClientSession, method: str, url: str, expect: int, body: Any = None
) -> dict[str, Any]:
    async with http.request(method, url, json=body) as response:
        text = await response.text()
        assert response.status == expect, f"{method} {url}: {response.status} {text}"
        data: dict[str, Any] = await response.json() if text else {}
        return data


async def test_drain_cancels_commands_loses_sessions_revokes_tokens_and_refuses_the_agent(
    lifecycle_stack: Stack,
    gateway: Service,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    test_env: RunEnv,
    agent_id: str,
    agent_token: str,
) -> None:
    agent = lifecycle_stack.agent(agent_id, agent_token, [gateway], AGENT_CONCURRENCY="1")
    await lifecycle_stack.ready(agent)
    await wait_online(http, gateway.url, agent_id, "gateway-life")
    running = await post_command(http, gateway.url, agent_id, action="SLEEP", payload={"seconds": 60})
    await wait_status(http, gateway.url, running["command_id"], "acknowledged")
    waiting = [await post_command(http, gateway.url, agent_id, action="PING") for _ in range(2)]
    session_id = await session_on(db, test_env.database_url, agent_id)

    drained = await json_call(http, "DELETE", f"{gateway.url}/api/v1/agents/{agent_id}", 200)

    mine = {running["command_id"], *(c["command_id"] for c in waiting)}
    assert mine <= set(drained["commands_cancelled"])
    assert drained["sessions_lost"] == [session_id]
    assert len(drained["tokens_revoked"]) == 1
    for command_id in mine:
        command = await get_json(http, f"{gateway.url}/api/v1/commands/{command_id}")
        assert command["status"] == "cancelled"
        assert f"agent {agent_id} was deleted" in command["error_message"]
    session = await db.fetchrow("SELECT state, reason, endpoint_host FROM sessions WHERE id = $1::uuid", session_id)
    assert (session["state"], session["endpoint_host"]) == ("lost", None)
    assert "was deleted" in session["reason"]
    tokens = await get_json(http, f"{gateway.url}/api/v1/agents/{agent_id}/tokens")
    assert all(token["revoked_at"] is not None for token in tokens["tokens"])
    row = await get_json(http, f"{gateway.url}/api/v1/agents/{agent_id}")
    assert row["deleted_at"] == drained["deleted_at"]

    # Its socket is closed (token revoked, 4401) and every reconnect is refused at the handshake (401).
    await wait_until(lambda: _log_has(agent, "close_code=4401"), timeout=15)
    await wait_until(lambda: _log_has(agent, "token_rejected"), timeout=15)
    await wait_until(lambda: _offline(db, agent_id), timeout=15)
    await asyncio.sleep(2)  # a reconnect attempt or two later: still offline
    assert await _offline(db, agent_id)

    # Its id is retired: no new token, no new command; a token that exists anyway is refused after hello.
    await json_call(http, "POST", f"{gateway.url}/api/v1/agents/{agent_id}/tokens", 409)
    with pytest.raises(AdminError):
        await create_agent_token(test_env.database_url, agent_id)
    refused = await json_call(http, "POST", f"{gateway.url}/api/v1/agents/{agent_id}/commands", 409, {"action": "PING"})
    assert refused["error"]["code"] == "agent_deleted"
    token = new_token()
    await db.execute("INSERT INTO agent_tokens (agent_id, token_hash) VALUES ($1, $2)", agent_id, hash_token(token))
    headers = {"Authorization": f"Bearer {token}"}
    async with http.ws_connect(f"{gateway.url}{CONNECT_PATH}", headers=headers) as ws:
        hello = Hello(agent_id=agent_id, platform="local", version="test", instance_id="late")
        await ws.send_str(msgspec.json.encode(hello).decode())
        message = await ws.receive(timeout=10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == closecodes.AGENT_DELETED
    assert await _offline(db, agent_id)


async def _log_has(service: Service, text: str) -> bool | None:
    return True if text in service.log() else None


async def _offline(db: asyncpg.Pool, agent_id: str) -> bool | None:
    return True if await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id) == "offline" else None


async def test_a_pending_command_past_its_expiry_ends_expired_while_its_agent_is_offline(
    gateway: Service, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    expiring = await post_command(http, gateway.url, agent_id, action="PING", expires_in_seconds=2)
    assert expiring["expires_at"] is not None
    forever = await post_command(http, gateway.url, agent_id, action="PING")  # COMMAND_EXPIRY=0: no expiry
    assert forever["expires_at"] is None

    expired = await wait_status(http, gateway.url, expiring["command_id"], "expired", timeout=15)
    assert f"while pending for agent {agent_id}" in expired["error_message"]
    assert expired["attempts"] == 0 and expired["completed_at"] is not None
    waiting = await get_json(http, f"{gateway.url}/api/v1/commands/{forever['command_id']}")
    assert waiting["status"] == "pending"
    listed = await get_json(http, f"{gateway.url}/api/v1/commands?agent_id={agent_id}&status=expired")
    assert [c["command_id"] for c in listed["commands"]] == [expiring["command_id"]]
    # An expired command is final: cancel says so.
    await json_call(http, "POST", f"{gateway.url}/api/v1/commands/{expiring['command_id']}/cancel", 409, {})


async def test_expiry_fields(gateway: Service, http: aiohttp.ClientSession, agent_id: str, agent_token: str) -> None:
    """Both given: the earlier applies; a time in the past: expired at the next sweep; bad ones: 400."""
    soon = await post_command(
        http, gateway.url, agent_id, action="PING", expires_in_seconds=1, expires_at="2099-01-01T00:00:00+01:00"
    )
    late = await post_command(http, gateway.url, agent_id, action="PING", expires_at="2001-01-01T00:00:00Z")
    assert late["expires_at"] == "2001-01-01T00:00:00Z" and soon["expires_at"] < "2099"
    for created in (soon, late):
        await wait_status(http, gateway.url, created["command_id"], "expired")
    url = f"{gateway.url}/api/v1/agents/{agent_id}/commands"
    for bad in ({"expires_at": ""}, {"expires_at": "2030-01-01T00:00:00"}, {"expires_in_seconds": 0}):
        refused = await json_call(http, "POST", url, 400, {"action": "PING", **bad})
        assert refused["error"]["field"] == next(iter(bad))


async def test_sessions_of_an_agent_gone_past_agent_lost_after_are_lost(
    gateway: Service, http: aiohttp.ClientSession, db: asyncpg.Pool, test_env: RunEnv, agent_id: str, agent_token: str
) -> None:
    async with silent_agent(http, gateway.url, agent_id, agent_token) as ws:
        await wait_online(http, gateway.url, agent_id, "gateway-life")
        live = await session_on(db, test_env.database_url, agent_id)
        stopped = await session_on(db, test_env.database_url, agent_id, state="stopped")
        for _ in range(LOST_AFTER + 2):  # online longer than AGENT_LOST_AFTER: its sessions are not lost
            await ws.send_str(msgspec.json.encode(Heartbeat()).decode())
            await asyncio.sleep(1)
        assert await db.fetchval("SELECT state FROM sessions WHERE id = $1::uuid", live) == "running"
    await wait_until(lambda: _offline(db, agent_id), timeout=15)

    async def lost() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await db.fetchrow(
            "SELECT state, reason, endpoint_host FROM sessions WHERE id = $1::uuid AND state = 'lost'", live
        )
        return row

    row = await wait_until(lost, timeout=LOST_AFTER + 15)
    assert row["endpoint_host"] is None
    assert f"agent {agent_id} gone since" in row["reason"] and "AGENT_LOST_AFTER" in row["reason"]
    assert await db.fetchval("SELECT state FROM sessions WHERE id = $1::uuid", stopped) == "stopped"


async def test_cancel_of_a_running_sleep_stops_it_on_the_agent(
    lifecycle_stack: Stack,
    gateway: Service,
    http: aiohttp.ClientSession,
    agent_id: str,
    agent_token: str,
    tmp_path: Path,
) -> None:
    executions = tmp_path / "executions.log"
    agent = lifecycle_stack.agent(agent_id, agent_token, [gateway], AGENT_EXECUTION_LOG=str(executions))
    await lifecycle_stack.ready(agent)
    await wait_online(http, gateway.url, agent_id, "gateway-life")
    sleep = await post_command(http, gateway.url, agent_id, action="SLEEP", payload={"seconds": 60})
    await wait_status(http, gateway.url, sleep["command_id"], "acknowledged")
    url = f"{gateway.url}/api/v1/commands/{sleep['command_id']}/cancel"
    cancelled = await json_call(http, "POST", url, 200, {"reason": "operator changed their mind"})
    assert cancelled["status"] == "cancelled" and cancelled["cancel_command_id"] is not None

    async def ended() -> list[str] | None:
        lines = executions.read_text().splitlines() if executions.exists() else []
        return next((line.split("\t") for line in lines if line.startswith(sleep["command_id"] + "\t")), None)

    line = await wait_until(ended, timeout=15)  # the SLEEP had 60 s to go
    assert line[2] == "failed"
    told = await wait_status(http, gateway.url, cancelled["cancel_command_id"], "completed")
    assert told["action"] == "CANCEL_COMMAND"
    assert told["result"] == {"command_id": sleep["command_id"], "state": "running"}
    row = await get_json(http, f"{gateway.url}/api/v1/commands/{sleep['command_id']}")
    assert row["status"] == "cancelled" and row["error_message"] == "operator changed their mind"
    assert f"cancel_id={told['command_id']} command_id={sleep['command_id']}" in agent.log()


async def test_cancel_sends_nothing_to_an_agent_of_the_previous_release(
    gateway: Service, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    async with silent_agent(http, gateway.url, agent_id, agent_token):  # advertises no CANCEL_COMMAND
        await wait_online(http, gateway.url, agent_id, "gateway-life")
        created = await post_command(http, gateway.url, agent_id, action="PING", max_attempts=1)
        await wait_status(http, gateway.url, created["command_id"], "sent")
        url = f"{gateway.url}/api/v1/commands/{created['command_id']}/cancel"
        cancelled = await json_call(http, "POST", url, 200, {})
        assert cancelled["status"] == "cancelled" and cancelled["cancel_command_id"] is None
        listed = await get_json(http, f"{gateway.url}/api/v1/commands?agent_id={agent_id}")
        assert [c["action"] for c in listed["commands"]] == ["PING"]
