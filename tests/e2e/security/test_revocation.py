"""Revoking access ends what it gave (§10; docs/security.md "Logins and revocation"), with real processes.

The stack is tests/e2e/test_streams.py's (two gateways, a dispatcher, a local agent connected to gateway A
only): every stream is opened on gateway B and every revocation is made through gateway A, so the close
crosses replicas (migration 0014's NOTIFY wakes B's round; B re-reads the rows itself). The sessions run
the byte-echo app, so a stream that is still open answers what it is sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from e2e import test_streams
from e2e.test_streams import ECHO_T, StreamStack, connect, receive_at_least, running_session, ticket
from streamspace_testkit import Api

# tests/e2e/test_streams.py's fixtures, as they are (module-scoped: this module gets a stack of its own)
streams, stream_admin, owner = test_streams.streams, test_streams.stream_admin, test_streams.owner
CLOSED_WITHIN = 4.0  # seconds; the NOTIFY makes it well under one, the round alone STREAM_ACCESS_CHECK (5 s)


class Person:
    """A user made through the API, with their password and a login token."""

    def __init__(self, base: str, username: str, password: str, api: Api) -> None:
        self.base, self.username, self.password, self.api = base, username, password, api

    async def login(self) -> Api:
        body = {"username": self.username, "password": self.password}
        _, reply = await Api(self.base, "").call("POST", "/api/v1/auth/login", body, expect=200)
        return Api(self.base, reply["token"])


async def person(admin: Api, streams: StreamStack) -> Person:
    username, password = f"rev-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    await admin.call("POST", "/api/v1/users", {"username": username, "password": password}, expect=201)
    first = Person(streams.a.url, username, password, Api(streams.a.url, ""))
    first.api = await first.login()
    return first


def on(api: Api, base: str) -> Api:
    """The same credential, sent to another gateway."""
    return Api(base, api.headers["Authorization"].removeprefix("Bearer "))


async def me(api: Api, base: str) -> int:
    status, _ = await on(api, base).call("GET", "/api/v1/users/me")
    return status


async def open_stream(
    http: aiohttp.ClientSession, streams: StreamStack, api: Api, session_id: str
) -> aiohttp.ClientWebSocketResponse:
    """A stream on gateway B with a ticket asked with `api`'s credential, seen to echo."""
    ws = await connect(http, streams.b, session_id, await ticket(api, session_id))
    await ws.send_bytes(b"ping")
    assert await receive_at_least(ws, 4) == b"ping"
    return ws


async def closed_by_revocation(
    ws: aiohttp.ClientWebSocketResponse, started: float, within: float = CLOSED_WITHIN
) -> tuple[Any, float]:
    async with asyncio.timeout(15):
        message = await ws.receive()
    seconds = time.monotonic() - started
    assert message.type == aiohttp.WSMsgType.CLOSE, message
    assert message.data == 4004, message
    assert seconds < within, seconds
    return message.extra, seconds


async def still_echoes(ws: aiohttp.ClientWebSocketResponse) -> bool:
    await ws.send_bytes(b"still")
    return await receive_at_least(ws, 5) == b"still"


async def test_logout_ends_the_token_and_the_stream_it_opened(
    streams: StreamStack, stream_admin: Api, owner: Api
) -> None:
    """Attack: a login token kept after its user logged out (a shared or stolen browser). Logout must end it on
    every replica, and the stream it opened, while the user's other login keeps working."""
    user = await person(stream_admin, streams)
    other_login = await user.login()
    session = await running_session(user.api, streams, ECHO_T)
    async with aiohttp.ClientSession() as http:
        ws = await open_stream(http, streams, user.api, session["id"])
        spare = await ticket(user.api, session["id"])
        started = time.monotonic()
        await user.api.call("POST", "/api/v1/auth/logout", expect=204)
        reason, seconds = await closed_by_revocation(ws, started)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # a ticket asked before the logout
            await connect(http, streams.b, session["id"], spare)
        assert refused.value.status == 401
    assert "logged out" in str(reason), reason
    assert await me(user.api, streams.a.url) == 401 and await me(user.api, streams.b.url) == 401
    assert await me(other_login, streams.b.url) == 200
    print(f"logout closed the stream on the other replica in {seconds * 1000:.0f} ms")
    key = (await other_login.call("POST", "/api/v1/keys", {"name": "script"}, expect=201))[1]["key"]
    status, body = await Api(streams.a.url, key).call("POST", "/api/v1/auth/logout")
    assert status == 403 and body["error"]["code"] == "not_a_login_token", body


async def test_changing_ones_own_password_ends_the_other_tokens_and_their_streams(
    streams: StreamStack, stream_admin: Api, owner: Api
) -> None:
    """Attack: a login token taken before the owner changed their password. The change must end every login
    token issued before it (and what they opened), and answer a new token for the one who changed it."""
    user = await person(stream_admin, streams)
    other_login = await user.login()
    session = await running_session(user.api, streams, ECHO_T)
    path = "/api/v1/users/me/password"
    status, body = await user.api.call("POST", path, {"current_password": "wrong-guess", "new_password": "x" * 12})
    assert status == 403, body
    assert (body["error"]["code"], body["error"]["field"]) == ("wrong_password", "current_password"), body
    async with aiohttp.ClientSession() as http:
        ws = await open_stream(http, streams, other_login, session["id"])
        started = time.monotonic()
        change = {"current_password": user.password, "new_password": "a new long password"}
        _, reply = await user.api.call("POST", path, change, expect=200)
        reason, _ = await closed_by_revocation(ws, started)
    assert "password changed" in str(reason), reason
    for old in (user.api, other_login):
        assert await me(old, streams.a.url) == 401 and await me(old, streams.b.url) == 401
    assert await me(Api(streams.a.url, reply["token"]), streams.b.url) == 200
    user.password = "a new long password"
    await user.login()


async def test_disabling_a_user_closes_their_open_stream(streams: StreamStack, stream_admin: Api, owner: Api) -> None:
    """Attack: a disabled user who keeps watching. Disabling ended their tokens already; now it also closes the
    stream they had open, on the replica that holds it."""
    user = await person(stream_admin, streams)
    session = await running_session(user.api, streams, ECHO_T)
    async with aiohttp.ClientSession() as http:
        ws = await open_stream(http, streams, user.api, session["id"])
        started = time.monotonic()
        disable = f"/api/v1/users/{await user_id(user)}"
        await on(stream_admin, streams.a.url).call("PATCH", disable, {"disabled": True}, expect=200)
        reason, seconds = await closed_by_revocation(ws, started)
    assert "disabled" in str(reason), reason
    print(f"disabling closed the stream on the other replica in {seconds * 1000:.0f} ms")
    assert "stream_revoked" in streams.b.log()


async def test_revoking_an_api_key_closes_the_stream_it_opened_and_no_other(
    streams: StreamStack, stream_admin: Api, owner: Api
) -> None:
    """Attack: a leaked API key whose stream goes on after the key is revoked. Only the stream that key opened
    closes; the same user's stream opened with their login token stays."""
    user = await person(stream_admin, streams)
    session = await running_session(user.api, streams, ECHO_T)
    _, created = await user.api.call("POST", "/api/v1/keys", {"name": "leaked"}, expect=201)
    keyed = Api(streams.a.url, created["key"])
    async with aiohttp.ClientSession() as http:
        by_key = await open_stream(http, streams, keyed, session["id"])
        by_login = await open_stream(http, streams, user.api, session["id"])
        started = time.monotonic()
        await user.api.call("DELETE", f"/api/v1/keys/{created['id']}", expect=204)
        reason, _ = await closed_by_revocation(by_key, started)
        assert "API key was revoked" in str(reason), reason
        assert await still_echoes(by_login)
        await by_login.close()


async def test_without_the_notify_the_round_still_closes_the_stream(
    streams: StreamStack, stream_admin: Api, owner: Api, db: asyncpg.Pool
) -> None:
    """Attack: a revocation whose wake-up is lost (the LISTEN connection was down, or the change was made
    with triggers off). Disabled here with session_replication_role=replica, so no trigger NOTIFYs: the round
    every STREAM_ACCESS_CHECK (5 s) must still find it and close the stream."""
    user = await person(stream_admin, streams)
    session = await running_session(user.api, streams, ECHO_T)
    async with aiohttp.ClientSession() as http:
        ws = await open_stream(http, streams, user.api, session["id"])
        started = time.monotonic()
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("UPDATE users SET disabled_at = now() WHERE username = $1", user.username)
        reason, seconds = await closed_by_revocation(ws, started, within=5.0 + 2.0)
    assert "disabled" in str(reason), reason
    print(f"the round alone closed the stream in {seconds:.1f} s (STREAM_ACCESS_CHECK 5 s)")


async def user_id(user: Person) -> str:
    _, body = await user.api.call("GET", "/api/v1/users/me", expect=200)
    return str(body["id"])
