"""The audit trail of sessions and streams (docs/security.md "Audit trail"), on real processes: a
gateway, a dispatcher, a local agent and its byte-echo session, because a stream needs an agent to dial
back (the REST events: tests/integration/test_audit.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from integration.test_audit import BYTE_ECHO, Trail, as_account

from streamspace_testkit import Account, Api, RunEnv, Stack, kill_sessions, new_account, new_user, wait_until
from streamspace_tools.admin import create_agent_token


@dataclass
class Running:
    admin: Account
    api: Api  # the administrator's
    owner: Api
    owner_id: str
    agent_id: str
    port: int


@pytest.fixture(scope="module")
async def running(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    base: Path = tmp_path_factory.mktemp("audit")
    stack = Stack(test_env, base)
    gateway_ = stack.gateway("gateway-audit", SESSION_QUOTA="100")
    dispatcher = stack.dispatcher("dispatcher-audit")
    await stack.ready(gateway_, dispatcher)
    agent_id = f"audit-agent-{test_env.run_id}"
    token = await create_agent_token(test_env.database_url, agent_id)
    agent = stack.agent(agent_id, token, [gateway_], LOCAL_SESSION_DIR=str(base / "sessions"))
    await stack.ready(agent)
    admin = await new_account(test_env.database_url, f"audit-admin-{uuid.uuid4().hex[:6]}", admin=True)
    api = Api(gateway_.url, admin.token)
    body = {"name": "audit-byte-echo", "command": BYTE_ECHO, "platforms": ["local"]}
    status, reply = await api.call("POST", "/api/v1/templates", body)
    assert status in (201, 409), reply
    owner = await new_user(api, "audit-owner")
    _, me = await owner.call("GET", "/api/v1/users/me", expect=200)
    yield Running(admin, api, owner, me["id"], agent_id, gateway_.port)
    stack.stop_all()
    kill_sessions(base / "sessions")
    print(stack.dump_logs())


async def test_session_verbs_and_a_stream_are_recorded(running: Running, db: asyncpg.Pool) -> None:
    """Pins: sessions made, stopped or deleted (by their owner or an administrator), and desktops watched,
    with no record of who did it. Each verb is one row in the verb's own transaction; a stream is one
    row when it opens and one when it closes, with the bytes each way and its duration."""
    trail = await Trail(db).start()
    owner = as_account(running.owner_id, (await running.owner.call("GET", "/api/v1/users/me"))[1]["username"])
    session = await running.owner.create("audit-byte-echo", agent_id=running.agent_id)
    await trail.one("session.create", owner, session["id"], template="audit-byte-echo", agent_id=running.agent_id)
    await running.owner.until_state(session["id"], "running", timeout=30)

    _, ticket = await running.owner.call("POST", f"/api/v1/sessions/{session['id']}/stream-ticket", expect=201)
    url = f"ws://127.0.0.1:{running.port}{ticket['url']}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("binary",)) as ws:
        opened = await wait_until(lambda: _new_of(trail, "stream.open"), timeout=15, interval=0.1)
        await ws.send_bytes(b"x" * 1000)
        echoed = b""
        while len(echoed) < 1000:
            echoed += await ws.receive_bytes(timeout=10)
    assert opened["target"] == session["id"] and opened["actor_id"] == running.owner_id
    assert opened["actor_name"] == owner.username and opened["address"] == "127.0.0.1"
    closed = await wait_until(lambda: _new_of(trail, "stream.close"), timeout=15, interval=0.1)
    assert (closed["target"], closed["actor_id"]) == (session["id"], running.owner_id)
    assert closed["detail"]["to_session"] == 1000 and closed["detail"]["to_browser"] >= 1000
    assert 0 < closed["detail"]["seconds"] < 60 and closed["detail"]["agent_id"] == running.agent_id
    replica = await db.fetchval("SELECT replica FROM audit_log WHERE id = $1::uuid", closed["id"])
    assert "gateway-audit" in replica

    for api, verb, state in (
        (running.owner, "hibernate", "hibernated"),
        (running.owner, "wake", "running"),
        (running.api, "stop", "stopped"),  # an administrator's verb names the administrator, and the owner
    ):
        await api.call("POST", f"/api/v1/sessions/{session['id']}/{verb}", expect=202)
        row = await _only(trail, f"session.{verb}")
        assert row["target"] == session["id"] and row["detail"]["owner"] == running.owner_id
        assert row["actor_id"] == (running.admin.user_id if api is running.api else running.owner_id)
        await api.call("POST", f"/api/v1/sessions/{session['id']}/{verb}", expect=202)  # asked again: no row
        assert await trail.new() == []
        await running.owner.until_state(session["id"], state, timeout=30)
    await running.owner.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)
    row = await _only(trail, "session.delete")
    assert (row["target"], row["actor_id"]) == (session["id"], running.owner_id)


async def _new_of(trail: Trail, action: str) -> dict[str, Any] | None:
    rows = [row for row in await trail.new() if row["action"] == action]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


async def _only(trail: Trail, action: str) -> dict[str, Any]:
    added = await trail.new()
    assert [row["action"] for row in added] == [action], added
    return added[0]
