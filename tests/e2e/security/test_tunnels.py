"""Streams and tunnels (docs/security.md, "Streams and tunnels"): attacks on the tunnel dial-back and on
stream tickets, against real processes (two gateways, a dispatcher, a local agent, byte-echo sessions,
real Redis and PostgreSQL).

The agent's control socket is on gateway A. Gateway B's TUNNEL_URL points at a transparent TCP relay in
this test process (the "spy") that records what the agent sends when it dials a tunnel back; the
agent's GATEWAY_URLS are A and the spy, so a dial-back to B through the spy is one to a configured
gateway. OPEN_TUNNEL commands of the attacks are inserted the way a gateway inserts them (its named
query), as anyone with write access to the commands could.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio

from streamspace_agent.drivers.local import LocalDriver
from streamspace_agent.drivers.settings import LocalSettings
from streamspace_agent.tunnels import Tunnels
from streamspace_common.db import load_queries
from streamspace_common.settings import load_settings
from streamspace_common.tokens import hash_token
from streamspace_testkit import Api, RunEnv, Service, Stack, free_port, kill_sessions, new_account, new_user, wait_until
from streamspace_tools.admin import create_agent_token

BYTE_ECHO = ["{python}", "-m", "streamspace_agent.byte_echo", "--port", "{port}"]
TEMPLATE = "sec-tunnel-echo"
STREAM_QUERIES = load_queries("streamspace_gateway.api", "stream_relay.sql")


class Recorder:
    """A TCP listener in this process that records every connection and every byte it is sent. As a
    relay (`target` set) it pipes each connection to 127.0.0.1:target; otherwise it answers the first
    request with 404 and closes (so an agent that dials it fails at once, having sent its headers)."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[bytearray] = []
        self.target: int | None = None
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def everything(self) -> bytes:
        return b"".join(self.received)

    async def start(self) -> Recorder:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        seen = bytearray()
        self.received.append(seen)
        if self.target is None:
            while b"\r\n\r\n" not in seen and (data := await reader.read(65536)):
                seen += data
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await source.read(65536):
                    if record and len(seen) < 16384:
                        seen.extend(data[: 16384 - len(seen)])
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(copy(reader, up_writer, True), copy(up_reader, writer, False))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class TunnelStack:
    def __init__(self, a: Service, b: Service, agent: Service, agent_id: str, token: str, spy: Recorder) -> None:
        self.a, self.b, self.agent, self.agent_id, self.token, self.spy = a, b, agent, agent_id, token, spy


@pytest.fixture(scope="module")
async def tunnels(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TunnelStack]:
    base = tmp_path_factory.mktemp("sec-tunnels")
    spy = await Recorder().start()
    stack = Stack(test_env, base)
    a = stack.gateway("gateway-ta", STREAM_TICKET_TTL="2", SESSION_QUOTA="100")
    b = stack.gateway("gateway-tb", STREAM_TICKET_TTL="2", SESSION_QUOTA="100", TUNNEL_URL=f"ws://127.0.0.1:{spy.port}")
    spy.target = b.port
    dispatcher = stack.dispatcher("dispatcher-tt")
    await stack.ready(a, b, dispatcher)
    agent_id = f"sec-tunnel-agent-{test_env.run_id}"
    token = await create_agent_token(test_env.database_url, agent_id)
    gateways = f"{a.url},http://127.0.0.1:{spy.port}"  # A first: its control socket stays on A
    agent = stack.agent(agent_id, token, [a], GATEWAY_URLS=gateways, LOCAL_SESSION_DIR=str(base / "sessions"))
    await stack.ready(agent)
    yield TunnelStack(a, b, agent, agent_id, token, spy)
    stack.stop_all()
    await spy.close()
    kill_sessions(base / "sessions")
    print(stack.dump_logs())


@pytest.fixture(scope="module")
async def owner(tunnels: TunnelStack, test_env: RunEnv) -> Api:
    admin = await new_account(test_env.database_url, f"sec-t-admin-{uuid.uuid4().hex[:6]}", admin=True)
    admin_api = Api(tunnels.a.url, admin.token)
    body = {"name": TEMPLATE, "command": BYTE_ECHO, "platforms": ["local"], "idle_timeout_seconds": 3600}
    status, reply = await admin_api.call("POST", "/api/v1/templates", body)
    assert status in (201, 409), reply
    return await new_user(admin_api, "sec-streamer")


@pytest.fixture(scope="module")
async def session(tunnels: TunnelStack, owner: Api) -> dict[str, Any]:
    created = await owner.create(TEMPLATE, agent_id=tunnels.agent_id)
    return await owner.until_state(created["id"], "running", timeout=30)


async def ticket(api: Api, session_id: str) -> str:
    _, body = await api.call("POST", f"/api/v1/sessions/{session_id}/stream-ticket", expect=201)
    return str(body["ticket"])


async def connect(http: aiohttp.ClientSession, gateway: Service, session_id: str, ticket_: str) -> Any:
    url = f"ws://127.0.0.1:{gateway.port}/api/v1/sessions/{session_id}/stream?ticket={ticket_}"
    return await http.ws_connect(url, protocols=("binary",), max_msg_size=0)


async def refused_status(gateway: Service, session_id: str, ticket_: str) -> int:
    """The HTTP status the stream's upgrade is refused with (the test fails if it is accepted)."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await connect(http, gateway, session_id, ticket_)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
    raise AssertionError(f"the stream of {session_id} opened with ticket {ticket_[:24]}...")


async def echo_once(gateway: Service, session_id: str, ticket_: str) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, gateway, session_id, ticket_)
        await ws.send_bytes(b"ping")
        message = await asyncio.wait_for(ws.receive(), 15)
        assert message.type == aiohttp.WSMsgType.BINARY and message.data == b"ping", message
        await ws.close()


async def open_tunnel(db: asyncpg.Pool, agent_id: str, payload: dict[str, Any]) -> tuple[str, str]:
    """Insert an OPEN_TUNNEL as a gateway does; its final status and error."""
    command_id = await db.fetchval(STREAM_QUERIES["open_tunnel"], agent_id, payload, 15)

    async def finished() -> asyncpg.Record | None:
        row = await db.fetchrow(STREAM_QUERIES["tunnel_command"], command_id)
        return row if row is not None and row["status"] in ("completed", "failed", "cancelled") else None

    row = await wait_until(finished, timeout=20)
    return str(row["status"]), str(row["error_message"] or "")


def tunnel_payload(session: dict[str, Any], url: str, **changes: Any) -> dict[str, Any]:
    endpoint = session["endpoint"]
    payload = {
        "session_id": session["id"],
        "host": endpoint["host"],
        "port": endpoint["port"],
        "url": url,
        "token": secrets.token_urlsafe(32),
    }
    return {**payload, **changes}


async def test_the_agent_refuses_a_tunnel_to_a_url_outside_gateway_urls(
    tunnels: TunnelStack, session: dict[str, Any], db: asyncpg.Pool
) -> None:
    """Attack: an OPEN_TUNNEL naming the attacker's URL. Before, the agent dialled it (ws://, with its
    long-lived agent token in the Authorization header) and piped the session's desktop there. Now it
    refuses the command and the attacker's listener receives nothing at all."""
    attacker = await Recorder().start()
    try:
        for url in (
            f"ws://127.0.0.1:{attacker.port}/api/v1/agents/tunnel",
            f"ws://localhost:{attacker.port}/api/v1/agents/tunnel",
        ):
            status, error = await open_tunnel(db, tunnels.agent_id, tunnel_payload(session, url))
            assert tunnels.token.encode() not in attacker.everything, attacker.everything[:400]
            assert attacker.connections == 0 and attacker.everything == b"", attacker.everything[:400]
            assert status == "failed" and "GATEWAY_URLS" in error, (status, error)
    finally:
        await attacker.close()
    assert "tunnel_refused" in tunnels.agent.log()


async def test_the_agent_connects_only_to_its_own_sessions_endpoint(
    tunnels: TunnelStack, session: dict[str, Any], db: asyncpg.Pool
) -> None:
    """Attack: an OPEN_TUNNEL to a configured gateway but naming any host:port as the endpoint (an
    internal service next to the agent). Before, the agent connected to it and piped it out. Now the
    endpoint must be the one its driver reports for that session, running on this agent."""
    target = await Recorder().start()
    url = f"ws://127.0.0.1:{tunnels.spy.port}/api/v1/agents/tunnel"
    try:
        payload = tunnel_payload(session, url, host="127.0.0.1", port=target.port)
        status, error = await open_tunnel(db, tunnels.agent_id, payload)
        assert target.connections == 0, "the agent connected to a host:port that is not the session's"
        assert status == "failed" and "is not session" in error, (status, error)
        foreign = tunnel_payload(session, url, session_id=str(uuid.uuid4()), host="127.0.0.1", port=target.port)
        status, error = await open_tunnel(db, tunnels.agent_id, foreign)
        assert target.connections == 0, "the agent connected for a session it does not run"
        assert status == "failed" and "does not run on this agent" in error, (status, error)
    finally:
        await target.close()


async def test_the_dial_back_carries_no_agent_token(tunnels: TunnelStack, session: dict[str, Any], owner: Api) -> None:
    """Attack: reading the agent token off a tunnel's dial-back (a relay, a proxy's log, a TLS-less hop).
    Before, every dial-back sent `Authorization: Bearer <agent token>`. Now the dial-back carries the
    single-use X-Tunnel-Token only, and the gateway accepts the tunnel on the strength of it: the stream
    works end to end."""
    before = tunnels.spy.everything.lower().count(b"x-tunnel-token:")
    await echo_once(tunnels.b, session["id"], await ticket(owner, session["id"]))
    sent = tunnels.spy.everything  # every byte the agent sent the relay (a connection may be reused)
    assert sent.lower().count(b"x-tunnel-token:") > before, "the agent did not dial back through the relay"
    assert b"authorization:" not in sent.lower(), sent[:400]
    assert tunnels.token.encode() not in sent, sent[:400]


async def test_a_dial_back_without_its_tunnel_token_is_refused(tunnels: TunnelStack) -> None:
    """The tunnel token is the dial-back's whole credential: the agent token alone opens no tunnel (404,
    logged), nor does a made-up tunnel token."""
    url = f"ws://127.0.0.1:{tunnels.b.port}/api/v1/agents/tunnel"
    async with aiohttp.ClientSession() as http:
        for headers in (
            {"Authorization": f"Bearer {tunnels.token}"},
            {"Authorization": f"Bearer {tunnels.token}", "X-Tunnel-Token": secrets.token_urlsafe(32)},
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers=headers)
            assert refused.value.status == 404
    assert "tunnel_refused" in tunnels.b.log()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_ticket_forged_in_redis_opens_nothing(
    tunnels: TunnelStack, session: dict[str, Any], owner: Api, test_env: RunEnv
) -> None:
    """Attack: whoever can write to Redis makes a ticket. Before, a ticket was a Redis key
    (`stream-ticket:<sha256>` -> session and user), so writing one opened anyone's desktop. Now a ticket
    is signed by the gateways; one written by hand, or signed with another key, is refused (401)."""
    client = redis.asyncio.Redis.from_url(test_env.redis_url)
    forged = "sstk_" + secrets.token_urlsafe(32)
    claim = json.dumps({"session_id": session["id"], "user_id": "anyone"})
    try:
        await client.set(f"{test_env.redis_prefix}stream-ticket:{hash_token(forged)}", claim)
        assert await refused_status(tunnels.b, session["id"], forged) == 401
        # a ticket of the right shape, signed with a key of the attacker's
        fields = {"tid": "x" * 22, "sid": session["id"], "sub": "anyone", "exp": time.time() + 60}
        claims = _b64(json.dumps(fields).encode())
        signature = _b64(hmac.new(b"not the gateways' key", claims.encode(), hashlib.sha256).digest())
        assert await refused_status(tunnels.b, session["id"], f"sstk_{claims}.{signature}") == 401
    finally:
        await client.aclose()
    assert "not signed by a gateway" in tunnels.b.log()
    await echo_once(tunnels.b, session["id"], await ticket(owner, session["id"]))  # a real one still works


async def test_a_ticket_for_another_session_is_refused(tunnels: TunnelStack, owner: Api) -> None:
    """Attack: a ticket the user got for session A used on their session B (or anyone's). Refused (401),
    and the refusal does not use up the ticket: it still opens A."""
    first = await owner.create(TEMPLATE, agent_id=tunnels.agent_id)
    second = await owner.create(TEMPLATE, agent_id=tunnels.agent_id)
    await owner.until_state(first["id"], "running")
    await owner.until_state(second["id"], "running")
    for_first = await ticket(owner, first["id"])
    assert await refused_status(tunnels.b, second["id"], for_first) == 401
    assert await refused_status(tunnels.a, second["id"], for_first) == 401
    assert "for another session" in tunnels.b.log()
    await echo_once(tunnels.b, first["id"], for_first)


async def test_a_replayed_ticket_is_refused(tunnels: TunnelStack, session: dict[str, Any], owner: Api) -> None:
    """Attack: replaying a ticket seen once (a proxy log, browser history), on either replica. Its id is
    marked used in Redis at its first redemption; every later one is refused (401)."""
    once = await ticket(owner, session["id"])
    await echo_once(tunnels.b, session["id"], once)
    assert await refused_status(tunnels.a, session["id"], once) == 401
    assert await refused_status(tunnels.b, session["id"], once) == 401
    assert "used already" in tunnels.a.log()


async def test_an_expired_ticket_is_refused(tunnels: TunnelStack, session: dict[str, Any], owner: Api) -> None:
    """Attack: a ticket used after its expiry (STREAM_TICKET_TTL=2 here), never redeemed before: the
    expiry is in the signed claims, so no Redis key's lifetime decides it. Refused (401)."""
    late = await ticket(owner, session["id"])
    await asyncio.sleep(2.5)
    assert await refused_status(tunnels.b, session["id"], late) == 401
    assert "expired" in tunnels.b.log()


async def test_while_redis_is_down_tickets_are_refused_not_reusable(
    stack: Stack, session: dict[str, Any], owner: Api
) -> None:
    """Single use is kept in Redis; a replica that cannot reach it refuses every ticket (503
    tickets_unavailable, logged) rather than letting one be used once per replica. Issuing needs no
    Redis (the ticket is signed), so the viewer's retry works as soon as Redis is back."""
    dead = stack.gateway("gateway-no-redis", REDIS_URL=f"redis://127.0.0.1:{free_port()}/1")
    await stack.ready(dead)
    issued = await ticket(Api(dead.url, owner.headers["Authorization"].removeprefix("Bearer ")), session["id"])
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(http, dead, session["id"], issued)
    assert refused.value.status == 503
    assert "Redis (used stream tickets) is unreachable" in dead.log()


def test_which_dial_back_urls_the_agent_accepts(tmp_path: Path) -> None:
    """The dial-back allow-list: scheme, host and port of a GATEWAY_URLS entry (http -> ws, https -> wss,
    default ports filled in); wss only when a gateway is wss; TUNNEL_NETWORKS admits addresses in those
    networks on a gateway's scheme and port."""
    settings = load_settings(LocalSettings, {"AGENT_ID": "allow-list", "LOCAL_SESSION_DIR": str(tmp_path)})
    driver = LocalDriver(settings)
    plain = Tunnels(driver, "http://gw-a:8000,http://10.1.2.3:8001", 60, 1, 1)
    assert plain.allowed("ws://gw-a:8000/api/v1/agents/tunnel") is None
    assert plain.allowed("ws://GW-A:8000/api/v1/agents/tunnel") is None
    assert plain.allowed("ws://10.1.2.3:8001/api/v1/agents/tunnel") is None
    for bad in (
        "ws://gw-a:8001/api/v1/agents/tunnel",  # another port
        "wss://gw-a:8000/api/v1/agents/tunnel",  # another scheme
        "ws://gw-b:8000/api/v1/agents/tunnel",  # another host
        "ws://gw-a/api/v1/agents/tunnel",  # port 80
        "ws://evil:8000/@gw-a:8000",
        "not a url",
    ):
        assert plain.allowed(bad) is not None, bad
    tls = Tunnels(driver, "https://gw.example:443,ws://gw-old:8000", 60, 1, 1)
    assert tls.allowed("wss://gw.example/api/v1/agents/tunnel") is None
    assert tls.allowed("wss://gw.example:443/api/v1/agents/tunnel") is None
    assert "wss" in (tls.allowed("ws://gw-old:8000/api/v1/agents/tunnel") or "")  # TLS in use: no plain ws
    pods = Tunnels(driver, "http://gateway:8000", 60, 1, 1, tunnel_networks="10.42.0.0/16")
    assert pods.allowed("ws://10.42.7.9:8000/api/v1/agents/tunnel") is None
    assert pods.allowed("ws://10.43.7.9:8000/api/v1/agents/tunnel") is not None
    assert pods.allowed("ws://10.42.7.9:22/api/v1/agents/tunnel") is not None
    with pytest.raises(ValueError, match="TUNNEL_NETWORKS"):
        Tunnels(driver, "http://gateway:8000", 60, 1, 1, tunnel_networks="10.42.0.0/33")
