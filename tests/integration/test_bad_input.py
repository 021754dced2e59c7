"""Bad input from REST clients and agent sockets: a clear error, and nothing stored changes (§2, §3, §6).

Every case runs against real gateway processes (`inproc_stack`) and checks the rows it could have
touched in PostgreSQL before and after.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio

from streamspace_common import closecodes
from streamspace_common.keys import RedisKeys
from streamspace_common.schemas import CONNECT_PATH
from streamspace_testkit import InProcessStack, RunEnv, wait_until
from streamspace_tools.admin import create_agent_token

JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# --- helpers ------------------------------------------------------------------------------------


def gateway_url(inproc_stack: InProcessStack) -> str:
    return inproc_stack.services[0].url


def socket_url(inproc_stack: InProcessStack) -> str:
    return gateway_url(inproc_stack).replace("http://", "ws://", 1) + CONNECT_PATH


def assert_error(body: Any, code: str, field: str | None) -> dict[str, Any]:
    """The body is {"error": {"code", "message", "field"?, "request_id"}} with this code and field."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) <= {"code", "message", "field", "request_id"}, error
    assert isinstance(error["request_id"], str) and error["request_id"], error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    if field is None:
        assert "field" not in error, error
    else:
        assert error.get("field") == field, error
    return error


async def command_rows(db: asyncpg.Pool, agent_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM agent_commands WHERE agent_id = $1 ORDER BY id", agent_id)
    return [dict(row) for row in rows]


async def agent_row(db: asyncpg.Pool, agent_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM agents WHERE agent_id = $1", agent_id)
    return None if row is None else dict(row)


async def insert_sent_command(db: asyncpg.Pool, agent_id: str, action: str = "PING") -> str:
    """A command already handed to the agent, as the dispatcher leaves it (no ack deadline, so it stays)."""
    command_id: str = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action, status, sent_at, attempts) "
        "VALUES ($1, $2, 'sent', now(), 1) RETURNING command_id",
        agent_id,
        action,
    )
    return command_id


def hello(agent: str, **overrides: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "hello",
        "agent_id": agent,
        "platform": "local",
        "version": "test",
        "instance_id": "instance-1",
        "capabilities": ["PING"],
        "concurrency": 0,
    }
    frame.update(overrides)
    return frame


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    """Read until the gateway closes the socket; return (close code, reason)."""
    message = await ws.receive(timeout=10)
    assert message.type == aiohttp.WSMsgType.CLOSE, f"expected a close, got {message!r}"
    return int(message.data), str(message.extra or "")


async def expect_welcome(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=10)
    assert message.type == aiohttp.WSMsgType.TEXT, f"expected welcome, got {message!r}"
    welcome: dict[str, Any] = message.json()
    assert welcome["type"] == "welcome", welcome
    return welcome


# --- REST: POST /api/v1/agents/{agent_id}/commands ----------------------------------------------

BIG = b'{"action": "ECHO", "payload": {"blob": "' + b"x" * (65 * 1024) + b'"}}'

# (id, body, headers, status, code, field)
BAD_BODIES: list[tuple[str, bytes, dict[str, str], int, str, str | None]] = [
    ("malformed_json", b'{"action": "PING",', JSON, 400, "malformed_json", None),
    ("empty_body", b"", JSON, 400, "malformed_json", None),
    ("not_an_object", b'["PING"]', JSON, 400, "invalid_field", None),
    ("unknown_field", b'{"action": "PING", "colour": "red"}', JSON, 400, "invalid_field", "colour"),
    ("missing_action", b'{"payload": {}}', JSON, 400, "invalid_field", "action"),
    ("action_int", b'{"action": 5}', JSON, 400, "invalid_field", "action"),
    ("payload_list", b'{"action": "PING", "payload": [1, 2]}', JSON, 400, "invalid_field", "payload"),
    ("action_lowercase", b'{"action": "ping"}', JSON, 400, "invalid_field", "action"),
    ("action_spaces", b'{"action": "PING NOW"}', JSON, 400, "invalid_field", "action"),
    ("action_trailing_newline", b'{"action": "PING\\n"}', JSON, 400, "invalid_field", "action"),
    (
        "command_id_trailing_newline",
        b'{"action": "PING", "command_id": "c-1\\n"}',
        JSON,
        400,
        "invalid_field",
        "command_id",
    ),
    ("bad_command_id", b'{"action": "PING", "command_id": "../x"}', JSON, 400, "invalid_field", "command_id"),
    ("max_attempts_0", b'{"action": "PING", "max_attempts": 0}', JSON, 400, "invalid_field", "max_attempts"),
    ("text_plain", b'{"action": "PING"}', TEXT, 415, "unsupported_media_type", "Content-Type"),
    ("form", b"action=PING", FORM, 415, "unsupported_media_type", "Content-Type"),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "field"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
async def test_rest_rejects(
    inproc_stack: InProcessStack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    agent_id: str,
    agent_token: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    field: str | None,
) -> None:
    before = await command_rows(db, agent_id)
    url = f"{gateway_url(inproc_stack)}/api/v1/agents/{agent_id}/commands"
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        assert_error(await response.json(), code, field)
    assert await command_rows(db, agent_id) == before


async def test_rest_oversized_body_is_413_and_stores_nothing(
    inproc_stack: InProcessStack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    assert len(BIG) > 64 * 1024
    url = f"{gateway_url(inproc_stack)}/api/v1/agents/{agent_id}/commands"
    async with http.post(url, data=BIG, headers=JSON) as response:
        assert response.status == 413, await response.text()
        assert response.content_type == "application/json"
        body = await response.json()
    error = assert_error(body, body["error"]["code"], None)
    assert "too_large" in error["code"]
    assert await command_rows(db, agent_id) == []

    # Just under the limit is accepted: the limit is the size, not the content.
    fits = b'{"action": "ECHO", "payload": {"blob": "' + b"x" * (60 * 1024) + b'"}}'
    async with http.post(url, data=fits, headers=JSON) as response:
        assert response.status == 201, await response.text()
    assert len(await command_rows(db, agent_id)) == 1


async def test_rest_unknown_agent_is_404_and_creates_nothing(
    inproc_stack: InProcessStack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str
) -> None:
    # No token fixture: this agent was never registered.
    total = await db.fetchval("SELECT count(*) FROM agent_commands")
    url = f"{gateway_url(inproc_stack)}/api/v1/agents/{agent_id}/commands"
    async with http.post(url, json={"action": "PING"}) as response:
        assert response.status == 404, await response.text()
        assert_error(await response.json(), "agent_not_found", "agent_id")
    assert await db.fetchval("SELECT count(*) FROM agent_commands") == total
    assert await command_rows(db, agent_id) == []
    assert await agent_row(db, agent_id) is None


async def test_rest_duplicate_command_id_is_409_and_keeps_the_first(
    inproc_stack: InProcessStack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    url = f"{gateway_url(inproc_stack)}/api/v1/agents/{agent_id}/commands"
    command_id = f"dup-{agent_id}"
    async with http.post(url, json={"action": "ECHO", "payload": {"n": 1}, "command_id": command_id}) as response:
        assert response.status == 201, await response.text()
    before = await command_rows(db, agent_id)
    assert [row["command_id"] for row in before] == [command_id]

    second = {"action": "SLEEP", "payload": {"seconds": 9}, "command_id": command_id, "max_attempts": 2}
    async with http.post(url, json=second) as response:
        assert response.status == 409, await response.text()
        assert_error(await response.json(), "duplicate_command", "command_id")
    assert await command_rows(db, agent_id) == before

    # The same id for another agent is a duplicate too: command ids are global.
    other = f"{agent_id}-other"
    await create_agent_token(inproc_stack.env.database_url, other)
    async with http.post(
        f"{gateway_url(inproc_stack)}/api/v1/agents/{other}/commands", json={"action": "PING", "command_id": command_id}
    ) as response:
        assert response.status == 409, await response.text()
        assert_error(await response.json(), "duplicate_command", "command_id")
    assert await command_rows(db, other) == []
    assert await command_rows(db, agent_id) == before


async def test_rest_unknown_command_is_404_json(inproc_stack: InProcessStack, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway_url(inproc_stack)}/api/v1/commands/no-such-command-{os.getpid()}") as response:
        assert response.status == 404, await response.text()
        assert response.content_type == "application/json"
        assert_error(await response.json(), "command_not_found", "command_id")


# --- the agent socket: handshake ----------------------------------------------------------------


def upgrade_headers() -> dict[str, str]:
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-real-token", "Bearer ", "Basic dXNlcjpwYXNz"],
    ids=["missing", "wrong_token", "empty_token", "basic_scheme"],
)
async def test_socket_refuses_bad_credentials(
    inproc_stack: InProcessStack,
    anon_http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    agent_id: str,
    agent_token: str,
    authorization: str | None,
) -> None:
    before_agent = await agent_row(db, agent_id)
    before_commands = await command_rows(db, agent_id)
    auth = {} if authorization is None else {"Authorization": authorization}

    # A real WebSocket client: the handshake is refused with 401.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with anon_http.ws_connect(socket_url(inproc_stack), headers=auth):
            pass
    assert refused.value.status == 401

    # The same request by hand, upgrade headers included, and as a plain GET: 401 with a JSON error.
    url = gateway_url(inproc_stack) + CONNECT_PATH
    for headers in ({**upgrade_headers(), **auth}, auth):
        async with anon_http.get(url, headers=headers) as response:
            assert response.status == 401
            assert response.content_type == "application/json"
            assert_error(await response.json(), "unauthorized", "Authorization")

    assert await agent_row(db, agent_id) == before_agent
    assert await command_rows(db, agent_id) == before_commands
    assert await redis_client.get(RedisKeys(test_env.redis_prefix).agent_pod(agent_id)) is None


async def test_socket_refuses_a_revoked_token(
    inproc_stack: InProcessStack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    # The token works...
    async with http.ws_connect(socket_url(inproc_stack), headers=bearer(agent_token)) as ws:
        await ws.send_json(hello(agent_id))
        await expect_welcome(ws)
        await wait_until(lambda: _status_is(db, agent_id, "online"))
    await wait_until(lambda: _status_is(db, agent_id, "offline"))
    # ...until it is revoked.
    await db.execute("UPDATE agent_tokens SET revoked_at = now() WHERE agent_id = $1", agent_id)
    before = await agent_row(db, agent_id)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(socket_url(inproc_stack), headers=bearer(agent_token)):
            pass
    assert refused.value.status == 401
    assert await agent_row(db, agent_id) == before


async def _status_is(db: asyncpg.Pool, agent_id: str, status: str) -> bool:
    return bool(await db.fetchval("SELECT status = $2 FROM agents WHERE agent_id = $1", agent_id, status))


# --- the agent socket: the first frame ----------------------------------------------------------

# Builds a frame from (our agent id, another registered agent's id, a command of ours that is 'sent'):
# str is sent as a text frame, bytes as a binary one.
FrameBuilder = Callable[[str, str, str], str | bytes]


def _hello_without(name: str) -> FrameBuilder:
    return lambda me, _, __: json.dumps({k: v for k, v in hello(me).items() if k != name})


def _hello_with(**overrides: Any) -> FrameBuilder:
    return lambda me, _, __: json.dumps(hello(me, **overrides))


def _text(value: str) -> FrameBuilder:
    return lambda _, __, ___: value


# (id, frame, expected close code, a word the close reason must contain)
FIRST_FRAMES: list[tuple[str, FrameBuilder, int, str]] = [
    ("not_json", _text("hello, gateway"), closecodes.BAD_FRAME, "JSON"),
    ("truncated_json", _text('{"type": "hello", "agent_id": '), closecodes.BAD_FRAME, "JSON"),
    ("json_array", _text("[]"), closecodes.BAD_FRAME, "object"),
    ("unknown_type", _text('{"type": "launch"}'), closecodes.BAD_FRAME, "type"),
    ("no_type", _text('{"agent_id": "x"}'), closecodes.BAD_FRAME, "type"),
    ("hello_platform_int", _hello_with(platform=1), closecodes.BAD_FRAME, "platform"),
    ("hello_capabilities_str", _hello_with(capabilities="PING"), closecodes.BAD_FRAME, "capabilities"),
    ("hello_concurrency_negative", _hello_with(concurrency=-1), closecodes.BAD_FRAME, "concurrency"),
    ("hello_agent_id_int", _hello_with(agent_id=7), closecodes.BAD_FRAME, "agent_id"),
    ("hello_missing_version", _hello_without("version"), closecodes.BAD_FRAME, "version"),
    ("hello_unknown_field", _hello_with(colour="red"), closecodes.BAD_FRAME, "colour"),
    # Longer than the agents column it is stored in: refused at the edge, never a failed UPDATE.
    ("hello_platform_too_long", _hello_with(platform="p" * 65), closecodes.BAD_FRAME, "platform"),
    ("hello_version_too_long", _hello_with(version="v" * 65), closecodes.BAD_FRAME, "version"),
    ("hello_instance_id_too_long", _hello_with(instance_id="i" * 256), closecodes.BAD_FRAME, "instance_id"),
    ("hello_unreported_id_too_long", _hello_with(unreported=["c" * 256]), closecodes.BAD_FRAME, "unreported"),
    ("hello_features_str", _hello_with(features="confirm"), closecodes.BAD_FRAME, "features"),
    (
        "result_before_hello",
        lambda _, __, command_id: json.dumps({"type": "result", "command_id": command_id, "status": "completed"}),
        closecodes.BAD_FRAME,
        "hello",
    ),
    (
        "ack_before_hello",
        lambda _, __, command_id: json.dumps({"type": "ack", "command_id": command_id}),
        closecodes.BAD_FRAME,
        "hello",
    ),
    ("heartbeat_before_hello", _text('{"type": "heartbeat"}'), closecodes.BAD_FRAME, "hello"),
    ("binary_hello", lambda me, _, __: json.dumps(hello(me)).encode(), closecodes.BAD_FRAME, "text"),
    ("hello_for_other_agent", lambda _, other, __: json.dumps(hello(other)), closecodes.FORBIDDEN, "agent"),
]


@pytest.mark.parametrize(
    ("build", "code", "reason_word"),
    [case[1:] for case in FIRST_FRAMES],
    ids=[case[0] for case in FIRST_FRAMES],
)
async def test_socket_rejects_first_frame(
    inproc_stack: InProcessStack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    agent_id: str,
    agent_token: str,
    build: FrameBuilder,
    code: int,
    reason_word: str,
) -> None:
    other_agent = f"{agent_id}-other"
    await create_agent_token(test_env.database_url, other_agent)
    command_id = await insert_sent_command(db, agent_id)
    mine = await agent_row(db, agent_id)
    assert mine is not None and mine["status"] == "offline"
    before = {name: await agent_row(db, name) for name in (agent_id, other_agent)}
    commands_before = {name: await command_rows(db, name) for name in (agent_id, other_agent)}

    frame = build(agent_id, other_agent, command_id)
    async with http.ws_connect(socket_url(inproc_stack), headers=bearer(agent_token)) as ws:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        close_code, reason = await closed_with(ws)

    assert close_code == code, reason
    assert reason_word.lower() in reason.lower(), reason
    for name in (agent_id, other_agent):
        assert await agent_row(db, name) == before[name]
        assert await command_rows(db, name) == commands_before[name]
        assert await redis_client.get(RedisKeys(test_env.redis_prefix).agent_pod(name)) is None


async def test_hello_fields_as_long_as_their_columns_are_stored(
    inproc_stack: InProcessStack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    longest = hello(agent_id, platform="p" * 64, version="v" * 64, instance_id="i" * 255)
    async with http.ws_connect(socket_url(inproc_stack), headers=bearer(agent_token)) as ws:
        await ws.send_json(longest)
        await expect_welcome(ws)
        await wait_until(lambda: _status_is(db, agent_id, "online"))
        row = await agent_row(db, agent_id)
        assert row is not None
        assert (row["platform"], row["version"], row["instance_id"]) == ("p" * 64, "v" * 64, "i" * 255)


# --- the agent socket: after a good hello -------------------------------------------------------

# (id, frame built from (our agent id, a command of ours that is 'sent'), a word the close reason must contain)
LATER_FRAMES: list[tuple[str, Callable[[str, str], str | bytes], str]] = [
    ("not_json", lambda _, __: "{not json", "JSON"),
    ("unknown_type", lambda _, cid: json.dumps({"type": "launch", "command_id": cid}), "type"),
    ("ack_unknown_field", lambda _, cid: json.dumps({"type": "ack", "command_id": cid, "colour": "red"}), "colour"),
    ("ack_id_int", lambda _, __: json.dumps({"type": "ack", "command_id": 7}), "command_id"),
    # PostgreSQL text cannot hold NUL: refused here, it never reaches (and stalls) the batched writer.
    ("ack_id_nul", lambda _, cid: json.dumps({"type": "ack", "command_id": cid + "\u0000"}), "command_id"),
    (
        "result_id_nul",
        lambda _, cid: json.dumps({"type": "result", "command_id": "\u0000" + cid, "status": "completed"}),
        "command_id",
    ),
    ("result_bad_status", lambda _, cid: json.dumps({"type": "result", "command_id": cid, "status": "done"}), "status"),
    (
        "result_is_list",
        lambda _, cid: json.dumps({"type": "result", "command_id": cid, "status": "completed", "result": [1]}),
        "result",
    ),
    ("second_hello", lambda me, _: json.dumps(hello(me, instance_id="instance-2")), "hello"),
    ("binary_ack", lambda _, cid: json.dumps({"type": "ack", "command_id": cid}).encode(), "text"),
]


@pytest.mark.parametrize(
    ("build", "reason_word"),
    [case[1:] for case in LATER_FRAMES],
    ids=[case[0] for case in LATER_FRAMES],
)
async def test_socket_rejects_bad_frame_after_welcome(
    inproc_stack: InProcessStack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    agent_id: str,
    agent_token: str,
    build: Callable[[str, str], str | bytes],
    reason_word: str,
) -> None:
    command_id = await insert_sent_command(db, agent_id)
    commands_before = await command_rows(db, agent_id)
    frame = build(agent_id, command_id)

    async with http.ws_connect(socket_url(inproc_stack), headers=bearer(agent_token)) as ws:
        await ws.send_json(hello(agent_id))
        await expect_welcome(ws)
        await wait_until(lambda: _status_is(db, agent_id, "online"))
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        close_code, reason = await closed_with(ws)

    assert close_code == closecodes.BAD_FRAME, reason
    assert reason_word.lower() in reason.lower(), reason
    assert await command_rows(db, agent_id) == commands_before
    await wait_until(lambda: _status_is(db, agent_id, "offline"))
    row = await agent_row(db, agent_id)
    assert row is not None and row["instance_id"] == "instance-1"  # a second hello changes nothing


async def test_ack_and_result_for_another_agents_command_change_nothing(
    inproc_stack: InProcessStack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    test_env: RunEnv,
    agent_id: str,
    agent_token: str,
) -> None:
    victim = f"{agent_id}-x"
    await create_agent_token(test_env.database_url, victim)
    theirs = await insert_sent_command(db, victim)
    mine = await insert_sent_command(db, agent_id)
    victim_before = await command_rows(db, victim)

    async with http.ws_connect(socket_url(inproc_stack), headers=bearer(agent_token)) as ws:
        await ws.send_json(hello(agent_id))
        await expect_welcome(ws)
        await ws.send_json({"type": "ack", "command_id": theirs})
        await ws.send_json({"type": "result", "command_id": theirs, "status": "completed", "result": {"x": 1}})
        await ws.send_json({"type": "result", "command_id": theirs, "status": "failed", "error": "spoofed"})
        # Frames are handled in order: once our own ack and result are stored, the ones above were handled too.
        await ws.send_json({"type": "ack", "command_id": mine})
        await ws.send_json({"type": "result", "command_id": mine, "status": "completed", "result": {"ok": True}})

        async def mine_done() -> bool:
            return bool(
                await db.fetchval("SELECT status = 'completed' FROM agent_commands WHERE command_id = $1", mine)
            )

        await wait_until(mine_done)
        assert not ws.closed  # these are valid frames: the socket stays up

    assert await command_rows(db, victim) == victim_before
    assert victim_before[0]["status"] == "sent"
