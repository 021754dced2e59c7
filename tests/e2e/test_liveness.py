"""One liveness frame per interval on an idle socket (issue 27, `ping_liveness`).

Before, an idle agent sent a WebSocket ping (answered by a pong) and a heartbeat frame every
interval. Now a gateway counts the pings as signs of life and says so in its welcome; an agent told so
sends no heartbeat frame while idle. Both sides stay compatible with the previous release: a gateway
that does not name the feature gets heartbeat frames, and an agent that does not announce it still
sends them (and its pings are still answered)."""

from __future__ import annotations

import asyncio
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
    AgentFrame,
    GatewayFrame,
    Heartbeat,
    Hello,
    Welcome,
)
from streamspace_testkit import HEARTBEAT_INTERVAL, Stack, serve_locally

INTERVAL = 1.0  # seconds: the agent's and the scripted gateway's heartbeat interval
WATCH = 4.5  # seconds of an idle socket watched: past the gateway's 3 intervals (the tests' 2 s) of silence


async def test_an_agent_that_only_pings_stays_connected(
    shared_stack: Stack, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """A client announcing ping_liveness pings every interval and sends no heartbeat frame: past 3 intervals
    (6 s here, checked every interval) the gateway has not closed it as stale (4410); its welcome named
    the feature."""
    gateway = shared_stack.services[0]
    url = gateway.url.replace("http://", "ws://") + CONNECT_PATH
    hello = Hello(agent_id=agent_id, platform="test", version="t", instance_id="i-1", features=[FEATURE_PING_LIVENESS])
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {agent_token}"}) as http,
        http.ws_connect(url, heartbeat=float(HEARTBEAT_INTERVAL)) as ws,  # the gateway's interval, as an agent
    ):
        await ws.send_str(msgspec.json.encode(hello).decode())
        welcome = msgspec.json.decode((await ws.receive(timeout=10)).data, type=GatewayFrame)
        assert isinstance(welcome, Welcome) and welcome.features == [FEATURE_PING_LIVENESS]
        # receive() answers nothing but a frame or a close (the pongs it reads are aiohttp's own)
        received = asyncio.create_task(ws.receive())
        await asyncio.sleep(5 * float(HEARTBEAT_INTERVAL))
        assert not received.done(), f"the gateway sent {received.result()!r} (close code {ws.close_code})"
        received.cancel()
        status = await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id)
        assert status == "online"


class ScriptedGateway:
    """Welcomes the agent with or without ping_liveness and counts what an idle socket brings."""

    def __init__(self, features: list[str]) -> None:
        self.features = features
        self.pings = 0
        self.heartbeats = 0
        self.welcomed = asyncio.Event()

    async def connect(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
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
            elif message.type == WSMsgType.TEXT:
                self.heartbeats += isinstance(msgspec.json.decode(message.data, type=AgentFrame), Heartbeat)
        return ws


@pytest.mark.parametrize(
    ("features", "beats"),
    [([FEATURE_CONFIRM, FEATURE_PING_LIVENESS], False), ([FEATURE_CONFIRM], True)],
    ids=["gateway counts pings", "gateway of the previous release"],
)
async def test_an_idle_agent_sends_one_liveness_frame_an_interval(
    stack: Stack, tmp_path: Path, features: list[str], beats: bool
) -> None:
    scripted = ScriptedGateway(features)
    app = web.Application()
    app.router.add_get(CONNECT_PATH, scripted.connect)
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
        assert scripted.pings >= 2, agent.log()[-3000:]
        if beats:
            assert scripted.heartbeats >= 2, agent.log()[-3000:]
        else:
            assert scripted.heartbeats == 0, agent.log()[-3000:]
    finally:
        await runner.cleanup()
