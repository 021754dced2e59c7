"""The agent's link to the control plane: connect, hello, heartbeats, commands in, acks and results out.

It reconnects forever (§4): on a failure it moves to the next of GATEWAY_URLS and waits with
exponential backoff and full jitter (0.25 s up to 30 s); a close with 1012 (gateway restarting)
moves on at once.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import msgspec
import structlog

from streamspace_common import closecodes
from streamspace_common.resilience import Backoff, Outage
from streamspace_common.schemas import Ack, AgentFrame, Command, GatewayFrame, Heartbeat, Hello, Welcome

from . import __version__, metrics
from .executor import Executor

CONNECT_PATH = "/api/v1/agents/connect"
log = structlog.get_logger("agent.client")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(GatewayFrame)


def socket_urls(gateway_urls: str) -> list[str]:
    """`http://host:8000` -> `ws://host:8000/api/v1/agents/connect`; ws:// and wss:// are kept."""
    urls = []
    for base in filter(None, (part.strip() for part in gateway_urls.split(","))):
        base = base.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        urls.append(base if base.endswith(CONNECT_PATH) else base + CONNECT_PATH)
    if not urls:
        raise ValueError("GATEWAY_URLS names no gateway")
    return urls


class AgentClient:
    def __init__(
        self,
        agent_id: str,
        token: str,
        gateway_urls: str,
        executor: Executor,
        ping_interval: float,
        concurrency: int = 0,
    ) -> None:
        self.agent_id = agent_id
        self.concurrency = concurrency
        self.ping_interval = ping_interval
        self.token = token
        self.urls = socket_urls(gateway_urls)
        self.executor = executor
        self.instance_id = uuid.uuid4().hex
        self.connected_to: str | None = None
        self._send_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self.connected_to is not None

    def hello(self) -> Hello:
        return Hello(
            agent_id=self.agent_id,
            platform=self.executor.driver.platform,
            version=__version__,
            instance_id=self.instance_id,
            capabilities=self.executor.driver.actions,
            concurrency=self.concurrency,
        )

    async def run(self) -> None:
        backoff = Backoff(base=0.25, cap=30.0)
        outage = Outage("gateway", log)
        index = 0
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"}) as http:
            while True:
                url = self.urls[index % len(self.urls)]
                index += 1
                close_code: int | None = None
                try:
                    close_code = await self.connect_once(http, url, backoff, outage)
                except aiohttp.WSServerHandshakeError as exc:
                    outage.failed(exc)
                    if exc.status == 401:
                        log.error("token_rejected", url=url, agent_id=self.agent_id)
                except Exception as exc:  # whatever went wrong, try the next gateway: never give up (§4)
                    outage.failed(exc)
                if close_code == closecodes.SERVICE_RESTART:
                    continue
                await asyncio.sleep(backoff.next_delay())

    async def connect_once(self, http: aiohttp.ClientSession, url: str, backoff: Backoff, outage: Outage) -> int | None:
        async with http.ws_connect(
            url, heartbeat=self.ping_interval, timeout=aiohttp.ClientWSTimeout(ws_close=5)
        ) as ws:
            await ws.send_str(_encoder.encode(self.hello()).decode())
            message = await ws.receive(timeout=10)
            if message.type != aiohttp.WSMsgType.TEXT:  # refused: the gateway closed instead of welcoming us
                log.warning("hello_refused", url=url, close_code=ws.close_code, reason=message.extra)
                return ws.close_code
            welcome = _decoder.decode(message.data)
            if not isinstance(welcome, Welcome):
                raise msgspec.DecodeError("expected welcome")
            outage.recovered()
            backoff.reset()
            self.connected_to = welcome.pod
            metrics.CONNECTED.set(1)
            metrics.CONNECTS.inc()
            log.info("connected", url=url, pod=welcome.pod)
            try:
                await self.serve(ws, welcome.heartbeat_interval)
            finally:
                self.connected_to = None
                metrics.CONNECTED.set(0)
            log.info("disconnected", url=url, close_code=ws.close_code)
            return ws.close_code

    async def serve(self, ws: aiohttp.ClientWebSocketResponse, heartbeat_interval: float) -> None:
        senders = [
            asyncio.create_task(self.send_heartbeats(ws, heartbeat_interval)),
            asyncio.create_task(self.send_results(ws)),
        ]
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = _decoder.decode(message.data)
                if isinstance(frame, Command):
                    await self.send(ws, Ack(command_id=frame.command_id))
                    self.executor.submit(frame)
        finally:
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)

    async def send(self, ws: aiohttp.ClientWebSocketResponse, frame: AgentFrame) -> None:
        async with self._send_lock:
            await ws.send_str(_encoder.encode(frame).decode())

    async def send_heartbeats(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.send(ws, Heartbeat())

    async def send_results(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await self.executor.has_unsent.wait()
            batch = self.executor.take_unsent()
            for position, result in enumerate(batch):
                try:
                    await self.send(ws, result)
                except (ConnectionError, RuntimeError, asyncio.CancelledError):
                    self.executor.put_back(batch[position:])
                    raise
