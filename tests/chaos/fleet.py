"""Many simulated agents in one process for the scale run (scale.py), each behaving on the wire like
streamspace-agent: every feature in its hello (confirm, inventory, ha, fence), a random first gateway of its
URLs, on 1012 a random other one, on 4412 (MOVE) another one announcing MOVING_HEADER and the next on a 409
(the agent's own `Route`), its lease secret presented on reconnect, a heartbeat frame every interval,
results kept until confirmed and sent again on the next socket (listed as unreported in its hello), and a
command it has already run answered with its result again, not run twice (the agent's journal). Every
execution is a line in the execution log (command id, agent id), as AGENT_EXECUTION_LOG writes them.

    python -m chaos.fleet SPEC_JSON   # {"agents": [[id, token], ...], "urls": [...], "log": path}

It prints `{"connected": N}` once every agent has its first welcome, then runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from typing import TextIO

import aiohttp
import msgspec

from streamspace_agent.gateways import Route
from streamspace_common import closecodes
from streamspace_common.schemas import (
    CONNECT_PATH,
    FEATURES,
    LEASE_HEADER,
    MOVING_HEADER,
    Command,
    Confirm,
    GatewayFrame,
    Heartbeat,
    Hello,
    Result,
    Role,
    Welcome,
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(GatewayFrame)
HEARTBEAT = _encoder.encode(Heartbeat()).decode()
CONNECT_GATE = 50  # handshakes in flight at once per process
# WebSocket pings every PING_INTERVAL s, the pong due within half of it. Longer than streamspace-agent's
# (its HEARTBEAT_INTERVAL): 1,250 simulated agents share one starved event loop on this shared 2-core box,
# where a 5 s pong deadline closed sockets of gateways that were merely slow (measured 2026-12-06).
PING_INTERVAL = 30.0


class FleetAgent:
    def __init__(self, agent_id: str, token: str, urls: list[str], log: TextIO) -> None:
        self.agent_id = agent_id
        self.token = token
        self.urls = [url.rstrip("/").replace("http://", "ws://", 1) + CONNECT_PATH for url in urls]
        self.route = Route(len(self.urls), random_start=True)
        self.instance_id = uuid.uuid4().hex
        self.lease: str | None = None
        self.done: set[str] = set()  # every command run (the journal)
        self.unconfirmed: dict[str, Result] = {}
        self.log = log
        self.welcomed = asyncio.Event()

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.lease:
            headers[LEASE_HEADER] = self.lease
        if self.route.moving:
            headers[MOVING_HEADER] = "1"
        return headers

    async def run(self, http: aiohttp.ClientSession, gate: asyncio.Semaphore) -> None:
        while True:
            code: int | None = None
            try:
                async with gate:
                    ws = await http.ws_connect(
                        self.urls[self.route.index], headers=self.headers(), heartbeat=PING_INTERVAL
                    )
                try:
                    code = await self.session(ws)
                finally:  # a socket given up on (no welcome in time) must not stay open behind our back
                    await ws.close()
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 409 and self.route.moving:
                    self.route.refused()
                    await asyncio.sleep(random.uniform(0, 0.2))
                    continue
            except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError, RuntimeError):
                pass
            if code in (closecodes.SERVICE_RESTART, closecodes.MOVE):
                self.route.elsewhere(moving=code == closecodes.MOVE)
                continue
            self.route.failed()
            await asyncio.sleep(random.uniform(0.25, 1.0))

    async def session(self, ws: aiohttp.ClientWebSocketResponse) -> int | None:
        hello = Hello(
            agent_id=self.agent_id,
            platform="sim",
            version="fleet",
            instance_id=self.instance_id,
            capabilities=["PING"],
            features=list(FEATURES),
            unreported=list(self.unconfirmed),
        )
        await ws.send_str(_encoder.encode(hello).decode())
        message = await ws.receive(timeout=60)
        if message.type != aiohttp.WSMsgType.TEXT:
            await ws.close()
            return ws.close_code
        welcome = _decoder.decode(message.data)
        if not isinstance(welcome, Welcome):
            raise RuntimeError(f"expected welcome, got {welcome!r}")
        self.route.arrived()
        self.welcomed.set()
        beats = asyncio.create_task(self.heartbeats(ws, welcome.heartbeat_interval))
        try:
            for result in list(self.unconfirmed.values()):
                await ws.send_str(_encoder.encode(result).decode())
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                await self.on_frame(ws, _decoder.decode(message.data))
        finally:
            beats.cancel()
            await ws.close()
        return ws.close_code

    async def on_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: GatewayFrame) -> None:
        if isinstance(frame, Command):
            result = self.unconfirmed.get(frame.command_id)
            if result is None:
                result = Result(command_id=frame.command_id, status="completed", result={"pong": True})
                if frame.command_id not in self.done:  # a redelivery of a finished one is answered, not run
                    self.done.add(frame.command_id)
                    self.log.write(f"{frame.command_id}\t{self.agent_id}\n")
                self.unconfirmed[frame.command_id] = result
            await ws.send_str(_encoder.encode(result).decode())
        elif isinstance(frame, Confirm):
            for command_id in frame.command_ids:
                self.unconfirmed.pop(command_id, None)
        elif isinstance(frame, Role) and frame.lease:
            self.lease = frame.lease

    @staticmethod
    async def heartbeats(ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        while not ws.closed:
            await asyncio.sleep(interval)
            await ws.send_str(HEARTBEAT)


async def main(spec: dict[str, object], log: TextIO) -> None:
    agents_spec = spec["agents"]
    urls = spec["urls"]
    assert isinstance(agents_spec, list) and isinstance(urls, list)
    agents = [FleetAgent(agent_id, token, urls, log) for agent_id, token in agents_spec]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        gate = asyncio.Semaphore(CONNECT_GATE)
        tasks = [asyncio.create_task(agent.run(http, gate)) for agent in agents]
        await asyncio.gather(*(agent.welcomed.wait() for agent in agents))
        print(json.dumps({"connected": len(agents)}), flush=True)
        await asyncio.gather(*tasks)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        fleet_spec = json.load(f)
    with open(fleet_spec["log"], "a", buffering=1) as execution_log:
        asyncio.run(main(fleet_spec, execution_log))
