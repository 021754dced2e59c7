"""One liveness frame per interval on an idle socket (issue 27, `ping_liveness`, then `pong_liveness`).

At first an idle agent sent a WebSocket ping (answered by a pong) and a heartbeat frame every
interval. With `ping_liveness` a gateway counts the pings as signs of life and says so in its welcome;
an agent told so sends no heartbeat frame while idle (a ping and its pong: two frames). With
`pong_liveness` the agent sends an unsolicited pong after an interval of silence, no ping, and the
gateway sends nothing back (one frame). Each side stays compatible with the earlier releases: a gateway
that names neither gets pings and heartbeat frames, one that names only `ping_liveness` gets pings, and
an agent that announces neither still sends heartbeat frames (and its pings are still answered)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import WSMsgType, web

from streamspace_common.schemas import (
    CONNECT_PATH,
    FEATURE_CONFIRM,
    FEATURE_PING_LIVENESS,
    FEATURE_PONG_LIVENESS,
    AgentFrame,
    GatewayFrame,
    Heartbeat,
    Hello,
    Welcome,
)
from streamspace_testkit import HEARTBEAT_INTERVAL, Stack, serve_locally, wait_until

INTERVAL = 1.0  # seconds: the agent's and the scripted gateway's heartbeat interval
WATCH = 4.5  # seconds of an idle socket watched: past the gateway's 3 intervals (the tests' 2 s) of silence


@contextlib.asynccontextmanager
async def welcomed(
    stack: Stack, agent_id: str, agent_token: str, feature: str, heartbeat: float | None = None
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A raw agent socket on the stack's first gateway whose hello announced only `feature`, after a welcome
    naming just that feature. `heartbeat`: aiohttp's pings at that interval; None: no pings, no autoping
    (receive() returns every frame the gateway sends, pings and pongs included)."""
    url = stack.services[0].url.replace("http://", "ws://") + CONNECT_PATH
    hello = Hello(agent_id=agent_id, platform="test", version="t", instance_id="i-1", features=[feature])
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {agent_token}"}) as http,
        http.ws_connect(url, heartbeat=heartbeat, autoping=heartbeat is not None) as ws,
    ):
        await ws.send_str(msgspec.json.encode(hello).decode())
        welcome = msgspec.json.decode((await ws.receive(timeout=10)).data, type=GatewayFrame)
        assert isinstance(welcome, Welcome) and welcome.features == [feature]
        yield ws


async def test_an_agent_that_only_pings_stays_connected(
    shared_stack: Stack, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """A client announcing ping_liveness pings every interval and sends no heartbeat frame: past 3 intervals
    (6 s here, checked every interval) the gateway has not closed it as stale (4410); its welcome named
    the feature."""
    # pings at the gateway's interval, as an agent
    async with welcomed(shared_stack, agent_id, agent_token, FEATURE_PING_LIVENESS, float(HEARTBEAT_INTERVAL)) as ws:
        # receive() answers nothing but a frame or a close (the pongs it reads are aiohttp's own)
        received = asyncio.create_task(ws.receive())
        await asyncio.sleep(5 * float(HEARTBEAT_INTERVAL))
        assert not received.done(), f"the gateway sent {received.result()!r} (close code {ws.close_code})"
        received.cancel()
        status = await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id)
        assert status == "online"


async def test_an_agent_that_only_sends_pongs_gets_nothing_back_and_stays_connected(
    shared_stack: Stack, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """A client announcing pong_liveness sends an unsolicited pong every interval and nothing else: the
    gateway's welcome names the feature, it sends no frame at all in 5 intervals (no pong, no ping:
    receive() without autoping returns every frame) and does not close the socket as stale (4410)."""
    interval = float(HEARTBEAT_INTERVAL)
    async with welcomed(shared_stack, agent_id, agent_token, FEATURE_PONG_LIVENESS) as ws:
        received = asyncio.create_task(ws.receive())
        for _ in range(5):
            await asyncio.sleep(interval)
            await ws.pong(b"")
        await asyncio.sleep(0.5 * interval)  # an answer to the last pong would be here by now
        assert not received.done(), f"the gateway sent {received.result()!r} (close code {ws.close_code})"
        received.cancel()
        status = await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id)
        assert status == "online"


async def test_an_earlier_agent_gets_no_pong_liveness_and_its_pings_answered(
    shared_stack: Stack, agent_id: str, agent_token: str
) -> None:
    """A hello without pong_liveness (an agent of an earlier release): the welcome does not name it, and the
    gateway answers the agent's ping with a pong carrying its payload."""
    async with welcomed(shared_stack, agent_id, agent_token, FEATURE_CONFIRM) as ws:
        await ws.ping(b"are you there")
        answer = await ws.receive(timeout=10)
        assert (answer.type, answer.data) == (WSMsgType.PONG, b"are you there")


async def test_an_idle_agent_on_a_gateway_that_takes_pongs_stays_connected(
    shared_stack: Stack, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """The real agent and the real gateway: welcomed with pong_liveness, the idle agent keeps its one socket
    past 3 intervals without a frame from the gateway (no reconnect on either side, still online)."""
    gateway = shared_stack.services[0]
    agent = shared_stack.agent(agent_id, agent_token, [gateway], name=f"agent-{agent_id}-pongs")
    try:
        await wait_until(lambda: "pong_liveness" in agent.log(), timeout=30, what="the agent's welcome")
        await asyncio.sleep(4 * float(HEARTBEAT_INTERVAL))
        log = agent.log()
        assert log.count("connected") == 1 and "disconnected" not in log, log[-3000:]
        status = await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id)
        assert status == "online"
        assert agent_id not in "".join(line for line in gateway.log().splitlines() if "agent_disconnected" in line)
    finally:
        agent.kill()
        shared_stack.services.remove(agent)


class ScriptedGateway:
    """Welcomes the agent with or without ping_ and pong_liveness and counts what an idle socket brings."""

    def __init__(self, features: list[str]) -> None:
        self.features = features
        self.pings = 0
        self.pongs = 0
        self.heartbeats = 0
        self.welcomed = asyncio.Event()
        self.sockets: set[web.WebSocketResponse] = set()

    async def close_sockets(self, app: web.Application) -> None:
        """On shutdown, as the real gateway: an agent sending pongs never closes an idle socket itself."""
        for ws in list(self.sockets):
            await ws.close(code=1012)

    async def connect(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.sockets.add(ws)
        hello = msgspec.json.decode((await ws.receive()).data, type=AgentFrame)
        assert isinstance(hello, Hello)
        features = [feature for feature in self.features if feature in hello.features]
        welcome = Welcome(pod="scripted", heartbeat_interval=INTERVAL, features=features)
        await ws.send_str(msgspec.json.encode(welcome).decode())
        self.welcomed.set()
        async for message in ws:
            if message.type == WSMsgType.PING:
                self.pings += 1
                await ws.pong(message.data)
            elif message.type == WSMsgType.PONG:
                self.pongs += 1
            elif message.type == WSMsgType.TEXT:
                self.heartbeats += isinstance(msgspec.json.decode(message.data, type=AgentFrame), Heartbeat)
        return ws


@pytest.mark.parametrize(
    ("features", "liveness"),
    [
        ([FEATURE_CONFIRM, FEATURE_PING_LIVENESS, FEATURE_PONG_LIVENESS], "pongs"),
        ([FEATURE_CONFIRM, FEATURE_PING_LIVENESS], "pings"),
        ([FEATURE_CONFIRM], "pings and heartbeats"),
    ],
    ids=["gateway takes pongs", "gateway of the previous release: counts pings", "earlier gateway"],
)
async def test_an_idle_agent_sends_one_liveness_frame_an_interval(
    stack: Stack, tmp_path: Path, features: list[str], liveness: str
) -> None:
    scripted = ScriptedGateway(features)
    app = web.Application()
    app.router.add_get(CONNECT_PATH, scripted.connect)
    app.on_shutdown.append(scripted.close_sockets)
    runner, port = await serve_locally(app)
    settings = {
        "AGENT_ID": "agent-liveness",
        "AGENT_TOKEN": "not-checked",
        "AGENT_STATE_DIR": str(tmp_path),
        "HEARTBEAT_INTERVAL": str(INTERVAL),
        "GATEWAY_URLS": f"http://127.0.0.1:{port}",
    }
    try:
        agent = stack.start("agent-liveness", "streamspace_agent", settings)
        await asyncio.wait_for(scripted.welcomed.wait(), timeout=30)
        await asyncio.sleep(WATCH)
        counted = {"pings": scripted.pings, "pongs": scripted.pongs, "heartbeats": scripted.heartbeats}
        if liveness == "pongs":  # one frame an interval (4 in 4.5 s, 3 on a slow box), and no ping to answer
            assert counted["pings"] == counted["heartbeats"] == 0, (counted, agent.log()[-3000:])
            assert 3 <= counted["pongs"] <= WATCH / INTERVAL + 1, (counted, agent.log()[-3000:])
        else:
            assert counted["pings"] >= 2 and counted["pongs"] == 0, (counted, agent.log()[-3000:])
            beats = counted["heartbeats"] >= 2 if liveness == "pings and heartbeats" else counted["heartbeats"] == 0
            assert beats, (counted, agent.log()[-3000:])
    finally:
        await runner.cleanup()
