"""Fencing and agent tokens (docs/security.md, "Agents and fencing"; §10: an agent is a token plus the lease
the server names). A leaked agent token must never beat HA fencing: a rogue socket cannot replace, silence
or mark offline the active instance, nor complete its commands; the agent refuses a command of a stale
epoch; agent tokens rotate with an overlap and expire. Real gateways, dispatcher and agent processes;
raw WebSockets where a test speaks for the rogue; a WebSocket server of the test's own where it plays a
gateway for one real agent process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import structlog
from aiohttp import web

from e2e.test_end_to_end import post_command, wait_status
from e2e.test_ha import decode, lease_epoch, next_frame
from e2e.test_pipeline import count_event
from streamspace_common import closecodes
from streamspace_common.schemas import (
    CONNECT_PATH,
    FEATURE_CONFIRM,
    FEATURE_HA,
    Ack,
    AgentFrame,
    Command,
    Confirm,
    Hello,
    Result,
    Role,
    Welcome,
)
from streamspace_gateway.writer import FrameWriter, Queued
from streamspace_testkit import RunEnv, Service, Stack, get_json, serve_locally, wait_until
from streamspace_tools.admin import create_agent_token


@asynccontextmanager
async def rogue(
    http: aiohttp.ClientSession, gateway: Service, agent_id: str, token: str, instance_id: str, ha: bool
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, Any]]:
    """A socket that holds the agent's token and says hello, the old way (no features) or with HA; it
    yields the socket and the first frame it got (None: the gateway closed it instead)."""
    hello = Hello(agent_id=agent_id, platform="local", version="rogue", instance_id=instance_id)
    if ha:
        hello.features = [FEATURE_CONFIRM, FEATURE_HA]
    headers = {"Authorization": f"Bearer {token}"}
    async with http.ws_connect(f"{gateway.url}{CONNECT_PATH}", headers=headers) as ws:
        await ws.send_str(msgspec.json.encode(hello).decode())
        message = await ws.receive(timeout=10)
        yield ws, decode(message.data) if message.type == aiohttp.WSMsgType.TEXT else None


async def forge(ws: aiohttp.ClientWebSocketResponse, command_id: str) -> None:
    """Send a forged result for someone else's command, if the socket is still open."""
    if ws.closed:
        return
    forged = Result(command_id=command_id, status="completed", result={"forged": True})
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(msgspec.json.encode(forged).decode())
        await asyncio.sleep(1.5)  # the writer has flushed it by now


async def command_row(db: asyncpg.Pool, command_id: str) -> asyncpg.Record:
    row: asyncpg.Record = await db.fetchrow(
        "SELECT status, result, epoch FROM agent_commands WHERE command_id = $1", command_id
    )
    return row


async def real_agent_running_a_command(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, gateway: Service, agent_id: str, token: str
) -> tuple[Service, str]:
    """A real HA agent on `gateway`, active at epoch 1, running a 30 s SLEEP (acknowledged)."""
    agent = stack.agent(agent_id, token, [gateway], name="real-agent")
    await stack.ready(agent)
    assert await wait_until(lambda: lease_epoch(db, agent_id)) == 1
    running = await post_command(http, gateway.url, agent_id, action="SLEEP", payload={"seconds": 30})
    await wait_status(http, gateway.url, running["command_id"], "acknowledged")
    return agent, running["command_id"]


async def agent_serves(http: aiohttp.ClientSession, gateway: Service, agent_id: str) -> tuple[str, str]:
    """The agent's status, and what became of a PING within 15 s ("completed": it keeps receiving commands)."""
    agent = await get_json(http, f"{gateway.url}/api/v1/agents/{agent_id}")
    ping = await post_command(http, gateway.url, agent_id, action="PING")
    with contextlib.suppress(AssertionError):
        await wait_status(http, gateway.url, ping["command_id"], "completed", timeout=15)
    command = await get_json(http, f"{gateway.url}/api/v1/commands/{ping['command_id']}")
    return agent["status"], command["status"]


async def test_a_rogue_with_the_old_hello_is_refused_and_the_real_agent_keeps_its_commands(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """The attack measured on main: a socket that says the old hello (no `ha`) with a leaked token, for an
    agent whose HA replica is active, completed that replica's running command with a forged result
    (accepted with epoch NULL), and when it left the agent was marked offline and stopped receiving
    commands. Now the rogue is refused (4426) before its welcome, on the active's gateway and on another,
    its result changes nothing, and the real agent keeps serving after it left."""
    gateway_a, gateway_b, _ = shared_stack.services
    _, running = await real_agent_running_a_command(stack, http, db, gateway_a, agent_id, agent_token)
    for gateway in (gateway_b, gateway_a):  # another replica first: the attack as measured
        async with rogue(http, gateway, agent_id, agent_token, "rogue", ha=False) as (ws, first):
            await forge(ws, running)
            await ws.close()
        row = await command_row(db, running)
        seen = {
            "welcomed": first is not None,
            "close_code": ws.close_code,
            "command": (row["status"], row["result"]),
            "agent_after_rogue_left": await agent_serves(http, gateway_a, agent_id),
        }
        assert seen == {
            "welcomed": False,
            "close_code": closecodes.HA_REQUIRED,
            "command": ("acknowledged", None),
            "agent_after_rogue_left": ("online", "completed"),
        }, gateway.name
    for gateway in (gateway_a, gateway_b):
        assert "close_code=4426" in gateway.log() and "agent_frame_rejected" in gateway.log()
    assert await lease_epoch(db, agent_id) == 1  # never changed hands


async def test_a_rogue_naming_the_active_instance_cannot_take_its_lease_nor_complete_its_command(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """With the `ha` hello and the active replica's own instance id (shown by GET /agents/{id}), a rogue
    used to replace the active socket on its gateway (4409) or take its lease, epoch unchanged, through
    another gateway. The lease is bound to the socket that holds it: on the same gateway the rogue is
    refused (4411), on another it only stands by, its forged result (stale epoch) is refused and logged,
    and the real agent keeps its lease and its commands after the rogue left."""
    gateway_a, gateway_b, _ = shared_stack.services
    agent, running = await real_agent_running_a_command(stack, http, db, gateway_a, agent_id, agent_token)
    detail = await get_json(http, f"{gateway_a.url}/api/v1/agents/{agent_id}")
    (instance,) = [i["instance_id"] for i in detail["instances"] if i["role"] == "active"]

    async with rogue(http, gateway_a, agent_id, agent_token, instance, ha=True) as (ws, first):
        await forge(ws, running)
        await ws.close()
    assert first is None and ws.close_code == closecodes.INSTANCE_CONNECTED, (first, ws.close_code)

    async with rogue(http, gateway_b, agent_id, agent_token, instance, ha=True) as (ws, first):
        assert isinstance(first, Welcome)
        assert await next_frame(ws, Role) == Role(role="standby", epoch=1)
        await forge(ws, running)
        row = await command_row(db, running)
        assert (row["status"], row["result"]) == ("acknowledged", None)
    assert "frame_refused_not_active" in gateway_b.log() and "result_not_applied" in gateway_b.log()
    assert await agent_serves(http, gateway_a, agent_id) == ("online", "completed")
    lease = await db.fetchrow("SELECT instance_id, gateway_pod, epoch FROM agent_leases WHERE agent_id = $1", agent_id)
    assert dict(lease) == {"instance_id": instance, "gateway_pod": "gateway-a", "epoch": 1}
    assert count_event(agent, "disconnected") == 0  # never replaced, never demoted


async def test_the_real_agent_proves_its_lease_and_takes_it_back_at_once_after_its_gateway_is_killed(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """Binding the lease to its socket must not cost the real agent its fast failover: its gateway killed
    (no release, no vacate: the lease still names that gateway), the agent presents the lease secret its
    role frame gave it and takes its lease back through another gateway at once, same instance and epoch,
    instead of waiting for the lease to lapse (3 heartbeat intervals) as a socket naming the instance
    without the secret must."""
    gateway_b = shared_stack.services[1]
    gateway_k = stack.gateway("gateway-k")
    await stack.ready(gateway_k)
    agent = stack.agent(agent_id, agent_token, [gateway_k, gateway_b], name="real-agent")
    await stack.ready(agent)
    assert await wait_until(lambda: lease_epoch(db, agent_id)) == 1
    before = await db.fetchrow("SELECT instance_id, holder_hash FROM agent_leases WHERE agent_id = $1", agent_id)
    assert before["holder_hash"] is not None  # the server named the holder
    killed_at = time.monotonic()
    gateway_k.kill()

    async def moved() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await db.fetchrow(
            "SELECT instance_id, gateway_pod, epoch, holder_hash FROM agent_leases WHERE agent_id = $1", agent_id
        )
        return row if row is not None and row["gateway_pod"] == "gateway-b" else None

    after = await wait_until(moved, timeout=20, interval=0.02)
    elapsed = time.monotonic() - killed_at
    print(f"lease back through gateway-b {elapsed:.3f} s after kill -9 of gateway-k")
    assert (after["instance_id"], after["epoch"]) == (before["instance_id"], 1)
    assert after["holder_hash"] != before["holder_hash"]  # a new secret for the new socket
    assert elapsed < 3.5, elapsed  # the lease would lapse only 4-6 s after the kill, +1 upkeep round
    assert await agent_serves(http, gateway_b, agent_id) == ("online", "completed")


@dataclass(eq=False)
class Peer:
    """What the writer needs of a socket (writer.Peer): here a socket that said hello `epoch`."""

    agent_id: str
    epoch: int | None
    waiting: int = 0
    confirms: bool = False

    def send_confirm(self, frame: Confirm) -> None:
        pass


@pytest.mark.parametrize("epoch", [None, 1], ids=["missing_epoch", "stale_epoch"])
async def test_a_forged_result_with_a_missing_or_stale_epoch_is_refused_and_logged(
    db: asyncpg.Pool, agent_id: str, agent_token: str, epoch: int | None
) -> None:
    """The writer's statement took a frame without an epoch (a socket without HA) for any agent: a forged
    result completed an HA agent's command. Now for an agent with a lease a missing epoch is refused like a
    stale one (the lease moved on to epoch 2), the refusal is logged with the agent and command, and the
    result of the socket holding epoch 2 applies."""
    await db.execute(
        "INSERT INTO agent_leases (agent_id, instance_id, gateway_pod, epoch, expires_at) "
        "VALUES ($1, 'real', 'gateway-x', 2, now() + interval '1 minute')",
        agent_id,
    )
    command_id = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action, status, attempts, sent_at, epoch) "
        "VALUES ($1, 'PING', 'sent', 1, now(), 2) RETURNING command_id",
        agent_id,
    )
    writer = FrameWriter(db, "gateway-x")
    result = Result(command_id=command_id, status="completed", result={"forged": True})
    forged = Queued(Peer(agent_id, epoch), epoch, result=result)
    with structlog.testing.capture_logs() as logs:
        await writer.write([], [(forged, result)])
    assert (await command_row(db, command_id))["status"] == "sent"
    assert {"event": "result_not_applied", "agent_id": agent_id, "command_id": command_id, "epoch": epoch} in [
        {k: entry.get(k) for k in ("event", "agent_id", "command_id", "epoch")} for entry in logs
    ]
    result = Result(command_id=command_id, status="completed", result={"ok": 1})
    await writer.write([], [(Queued(Peer(agent_id, 2), 2, result=result), result)])
    assert (await command_row(db, command_id))["status"] == "completed"


async def test_the_agent_refuses_a_command_of_a_stale_epoch(stack: Stack, tmp_path: Path) -> None:
    """The agent ran whatever command reached its socket, whatever its epoch. Now it keeps the newest epoch
    it was told and refuses (unacknowledged, logged) a command of an older one, or one without an epoch
    from a gateway that speaks HA; a command of the current epoch runs.

    The gateway is this test (a WebSocket server speaking the gateway's frames), the agent a real process."""
    decoder = msgspec.json.Decoder(AgentFrame)
    frames: list[AgentFrame] = []
    fresh_done = asyncio.get_running_loop().create_future()

    async def connect(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert isinstance(decoder.decode((await ws.receive()).data), Hello)
        for frame in (
            Welcome(pod="fake-gateway", heartbeat_interval=10, features=[FEATURE_CONFIRM, FEATURE_HA]),
            Role(role="active", epoch=3),
            Command(command_id="stale-1", action="PING", epoch=2),
            Command(command_id="no-epoch-1", action="PING"),
            Command(command_id="fresh-1", action="PING", epoch=3),
        ):
            await ws.send_str(msgspec.json.encode(frame).decode())
        async for message in ws:
            got = decoder.decode(message.data)
            frames.append(got)
            if isinstance(got, Result):
                await ws.send_str(msgspec.json.encode(Confirm(command_ids=[got.command_id])).decode())
                if got.command_id == "fresh-1" and not fresh_done.done():
                    fresh_done.set_result(True)
        return ws

    app = web.Application()
    app.router.add_get(CONNECT_PATH, connect)
    runner, port = await serve_locally(app)
    settings = {"AGENT_ID": "agent-stale-epoch", "AGENT_TOKEN": "not-checked", "AGENT_STATE_DIR": str(tmp_path)}
    try:
        agent = stack.start(
            "agent-stale-epoch", "streamspace_agent", {**settings, "GATEWAY_URLS": f"http://127.0.0.1:{port}"}
        )
        await asyncio.wait_for(fresh_done, timeout=15)
        await asyncio.sleep(1.0)  # time for anything the stale ones would have produced
    finally:
        await runner.cleanup()
    answered = {frame.command_id for frame in frames if isinstance(frame, Ack | Result)}
    assert answered == {"fresh-1"}, frames
    log = agent.log()
    assert log.count("command_refused_stale_epoch") == 2 and "stale-1" in log and "no-epoch-1" in log


def admin_cli(test_env: RunEnv, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": test_env.database_url, "LOG_LEVEL": "warning"}
    command = [sys.executable, "-c", "from streamspace_tools.admin import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


async def keep_open_until_closed(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> None:
    """Heartbeats until the gateway closes the socket (only a token check may close it)."""
    deadline = time.monotonic() + timeout
    while not ws.closed and time.monotonic() < deadline:
        await ws.send_str('{"type": "heartbeat"}')
        with contextlib.suppress(TimeoutError):
            await ws.receive(timeout=0.5)


async def connect_status(http: aiohttp.ClientSession, gateway: Service, token: str) -> int:
    """The handshake's status with this token: 101 if the gateway took the socket."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with http.ws_connect(f"{gateway.url}{CONNECT_PATH}", headers=headers):
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


async def test_a_rotated_token_works_through_its_overlap_with_a_warning_then_its_socket_closes(
    shared_stack: Stack, http: aiohttp.ClientSession, test_env: RunEnv, agent_id: str, agent_token: str
) -> None:
    """Agent tokens had no rotation path and no end. `streamspace-admin agent-token rotate` prints a new
    token alone on the last line; the old one keeps working through the overlap, the gateway logging a
    warning each time it is used; after the overlap it is refused (401) and the socket opened with it is
    closed (4401); the new token works throughout."""
    gateway = shared_stack.services[0]
    done = admin_cli(test_env, "agent-token", "rotate", agent_id, "--overlap", "4")
    assert done.returncode == 0, done.stderr
    new_token = done.stdout.strip().splitlines()[-1]
    assert new_token != agent_token and len(new_token) > 30 and "works until" in done.stderr
    async with rogue(http, gateway, agent_id, agent_token, "old-token", ha=True) as (old_ws, first):
        assert isinstance(first, Welcome)
        assert "agent_token_in_overlap" in gateway.log()
        async with rogue(http, gateway, agent_id, new_token, "new-token", ha=True) as (new_ws, first_new):
            assert isinstance(first_new, Welcome)
            await keep_open_until_closed(old_ws, timeout=15)
            assert old_ws.close_code == closecodes.TOKEN_REVOKED
            assert not new_ws.closed
    assert "agent_token_expired" in gateway.log()
    assert await connect_status(http, gateway, agent_token) == 401
    assert await connect_status(http, gateway, new_token) == 101


async def test_an_expired_token_is_refused_and_its_socket_closed(
    shared_stack: Stack, http: aiohttp.ClientSession, test_env: RunEnv, agent_id: str
) -> None:
    """A token made with an expiry (agent-token create --expires-in) works until then; its open socket is
    closed with 4401 by the gateway's token check and a new connect is refused."""
    gateway = shared_stack.services[1]
    token = await create_agent_token(test_env.database_url, agent_id, expires_in=3)
    async with rogue(http, gateway, agent_id, token, "short-lived", ha=True) as (ws, first):
        assert isinstance(first, Welcome)
        await keep_open_until_closed(ws, timeout=15)
        assert ws.close_code == closecodes.TOKEN_REVOKED
    assert await connect_status(http, gateway, token) == 401


async def test_rotation_through_the_api(
    shared_stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    """POST /agents/{id}/tokens/rotate: a new token, the old ones listed with the end of their overlap (0 s
    here: refused at once); a bad overlap is a 400 naming the field; an unknown agent a 404."""
    gateway = shared_stack.services[0]
    url = f"{gateway.url}/api/v1/agents/{agent_id}/tokens"
    async with http.post(f"{url}/rotate", json={"overlap_seconds": -1}) as response:
        assert response.status == 400 and (await response.json())["error"]["field"] == "overlap_seconds"
    async with http.post(f"{gateway.url}/api/v1/agents/no-such-agent/tokens/rotate", json={}) as response:
        assert response.status == 404
    async with http.post(f"{url}/rotate", json={"overlap_seconds": 0}) as response:
        assert response.status == 201, await response.text()
        rotated = await response.json()
    (old,) = rotated["superseded"]
    assert old["superseded_at"] is not None and old["expires_at"] is not None
    assert await connect_status(http, gateway, agent_token) == 401
    assert await connect_status(http, gateway, rotated["token"]) == 101
    listed = {t["id"]: t for t in (await get_json(http, url))["tokens"]}
    assert listed[old["id"]]["superseded_at"] is not None and listed[rotated["id"]]["expires_at"] is None
