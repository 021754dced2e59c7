"""The agent's link to the control plane: connect, hello, heartbeats, commands in, acks and results out.

Liveness on an idle socket is one frame an interval: an unsolicited pong where the gateway's welcome names
`pong_liveness` (no pings then; TCP_USER_TIMEOUT finds a vanished gateway: streamspace_common/liveness.py),
else aiohttp's ping (answered by a pong), plus a heartbeat frame unless the welcome names `ping_liveness`.

It reconnects forever (§4), with exponential backoff and full jitter (0.25 s up to 30 s) after a
failure; which of GATEWAY_URLS it tries next, and when it says it is moving, is gateways.py's `Route`.
What one socket sends (acks, and the results a gateway has not confirmed) is outbox.py's `Outbox`.

Replicas of one agent id may run at once (HA): the agent announces the `ha` feature and the gateway
says with `role` frames whether this replica is active (it receives commands) or standby (it starts
nothing new; what it already runs finishes, but a result it reports under a lost epoch is refused and
the command goes to the active replica). A gateway without HA treats it as the only replica.
Fencing: the gateway names the lease holder. An active role frame carries a secret (feature `fence`)
that this process presents on its next connects (LEASE_HEADER): it alone may take its lease back at
once through another gateway, or replace its own half-dead socket; an instance id alone does not.
The agent keeps the newest lease epoch it has been told (role frames, and the commands it
took) and refuses, unacknowledged and logged, a command whose epoch is older, or that carries none
from a gateway that speaks HA: it was claimed for a term that is over (or forged), and the gateway
redelivers the command to whichever replica holds the lease now.

A gateway that does not confirm (an earlier release: its welcome names no features) gets today's
behaviour: a result counts as reported once written to its socket. An earlier gateway also refuses a
hello with fields it does not know (4400 "unknown field"): the agent then says hello again at once,
the earlier way, on the same gateway.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import aiohttp
import msgspec
import structlog

from streamspace_common import closecodes
from streamspace_common.actions import CANCEL_COMMAND, OPEN_TUNNEL
from streamspace_common.liveness import Pongs, take_pongs
from streamspace_common.resilience import Backoff, Outage
from streamspace_common.schemas import (
    FEATURE_CONFIRM,
    FEATURE_FENCE,
    FEATURE_HA,
    FEATURE_INVENTORY,
    FEATURE_PING_LIVENESS,
    FEATURE_PONG_LIVENESS,
    LEASE_HEADER,
    MOVING_HEADER,
    Ack,
    AgentFrame,
    Command,
    Confirm,
    GatewayFrame,
    Heartbeat,
    Hello,
    Role,
    Welcome,
)

from . import __version__, metrics
from .executor import Executor
from .gateways import Route, socket_urls
from .outbox import Outbox

MAX_HELLO_IDS = 10_000  # more running + unreported than this: the hello lists none (and asks no requeue)
REFUSED_PAUSE = 0.2  # seconds at most (jittered) between a refused move and the next try
log = structlog.get_logger("agent.client")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(GatewayFrame)


class HelloRefused(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"hello refused with {code}: {reason}")
        self.code = code
        self.reason = reason

    @property
    def unknown_field(self) -> bool:
        """An earlier gateway's answer to a field added since (its frames forbid unknown fields)."""
        return self.code == closecodes.BAD_FRAME and "unknown field" in self.reason


class AgentClient:
    def __init__(
        self,
        agent_id: str,
        token: str,
        gateway_urls: str,
        executor: Executor,
        ping_interval: float,
        concurrency: int = 0,
        max_sessions: int = 0,
        random_start: bool = True,
    ) -> None:
        self.agent_id = agent_id
        self.concurrency = concurrency
        self.max_sessions = max_sessions
        self.ping_interval = ping_interval
        self.token = token
        self.urls = socket_urls(gateway_urls)
        self.route = Route(len(self.urls), random_start)
        self.executor = executor
        self.instance_id = uuid.uuid4().hex
        self.connected_to: str | None = None
        self.disconnected_at: float | None = None  # monotonic time the last registered socket closed
        self.role: str = "active"  # HA: what the gateway said last; "active" for a gateway without HA
        self.epoch = 0  # HA: the newest lease epoch a gateway told this process (it never goes back)
        self.fenced = False  # the gateway of this socket speaks HA: every command must carry a current epoch
        self.lease: str | None = None  # the secret naming this process as its lease's holder (active role frame)
        self.received_at = 0.0  # monotonic time the last frame came from the gateway
        self.pongs: Pongs | None = None  # this socket's liveness frames when the gateway takes pongs
        self._send_lock = asyncio.Lock()

    @property
    def capabilities(self) -> list[str]:
        """The actions the driver runs, plus "max_sessions=N" when a session capacity is set (an older
        gateway stores it as one more capability string: no new hello field)."""
        extra = [f"max_sessions={self.max_sessions}"] if self.max_sessions > 0 else []
        # CANCEL_COMMAND: the executor stops a running command (the control plane sends it to agents that list it)
        tunnels = [OPEN_TUNNEL] if self.executor.tunnels is not None else []
        return [*self.executor.driver.actions, *tunnels, CANCEL_COMMAND, *extra]

    @property
    def connected(self) -> bool:
        return self.connected_to is not None

    def hello(self, legacy: bool = False) -> Hello:
        """Our hello; `legacy`: without the fields added since the first release (for an earlier gateway)."""
        hello = Hello(
            agent_id=self.agent_id,
            platform=self.executor.driver.platform,
            version=__version__,
            instance_id=self.instance_id,
            capabilities=self.capabilities,
            concurrency=self.concurrency,
        )
        if legacy:
            return hello
        hello.features = [FEATURE_CONFIRM, FEATURE_HA, FEATURE_FENCE, FEATURE_PING_LIVENESS, FEATURE_PONG_LIVENESS]
        running, unreported = list(self.executor.running), self.executor.unreported()
        if len(running) + len(unreported) <= MAX_HELLO_IDS:  # complete lists, or none at all
            hello.features.append(FEATURE_INVENTORY)
            hello.running, hello.unreported = running, unreported
        return hello

    async def run(self) -> None:
        backoff = Backoff(base=0.25, cap=30.0)
        outage = Outage("gateway", log)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"}) as http:
            while True:
                url = self.urls[self.route.index]
                close_code: int | None = None
                try:
                    try:
                        close_code = await self.connect_once(http, url, backoff, outage)
                    except HelloRefused as exc:
                        if not exc.unknown_field:
                            raise
                        log.info("gateway_predates_hello_fields", url=url, reason=exc.reason)
                        close_code = await self.connect_once(http, url, backoff, outage, legacy=True)
                except HelloRefused as exc:
                    outage.failed(exc)
                    close_code = exc.code
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status == 409 and self.route.moving:  # that replica has no room for a mover
                        log.info("move_refused", url=url)
                        self.route.refused()
                        await asyncio.sleep(random.uniform(0, REFUSED_PAUSE))  # noqa: S311
                        continue
                    outage.failed(exc)
                    if exc.status == 401:
                        log.error("token_rejected", url=url, agent_id=self.agent_id)
                except Exception as exc:  # whatever went wrong, try the next gateway: never give up (§4)
                    outage.failed(exc)
                if close_code in (closecodes.SERVICE_RESTART, closecodes.MOVE):
                    self.route.elsewhere(moving=close_code == closecodes.MOVE)
                    if close_code == closecodes.MOVE:
                        metrics.MOVES.inc()
                    continue
                self.route.failed()
                await asyncio.sleep(backoff.next_delay())

    async def connect_once(
        self, http: aiohttp.ClientSession, url: str, backoff: Backoff, outage: Outage, legacy: bool = False
    ) -> int | None:
        headers = {LEASE_HEADER: self.lease} if self.lease and not legacy else {}
        if self.route.moving:
            headers[MOVING_HEADER] = "1"
        async with http.ws_connect(
            url, heartbeat=self.ping_interval, timeout=aiohttp.ClientWSTimeout(ws_close=5), headers=headers
        ) as ws:
            await ws.send_str(_encoder.encode(self.hello(legacy)).decode())
            message = await ws.receive(timeout=10)
            if message.type != aiohttp.WSMsgType.TEXT:  # refused: the gateway closed instead of welcoming us
                reason = str(message.extra or "")
                log.warning("hello_refused", url=url, close_code=ws.close_code, reason=reason)
                raise HelloRefused(ws.close_code, reason)
            welcome = _decoder.decode(message.data)
            if not isinstance(welcome, Welcome):
                raise msgspec.DecodeError("expected welcome")
            outage.recovered()
            backoff.reset()
            self.route.arrived()
            self.connected_to = welcome.pod
            metrics.CONNECTED.set(1)
            metrics.CONNECTS.inc()
            if self.disconnected_at is not None:
                metrics.RECONNECT_SECONDS.observe(time.monotonic() - self.disconnected_at)
                self.disconnected_at = None
            confirms = FEATURE_CONFIRM in welcome.features
            self.fenced = FEATURE_HA in welcome.features
            self.role = "standby" if self.fenced else "active"  # until a role frame says
            log.info("connected", url=url, pod=welcome.pod, features=welcome.features, instance_id=self.instance_id)
            try:
                self.received_at = time.monotonic()
                # the gateway counts our pings, and they come at least as often as it wants a sign of life
                pings_count = (
                    FEATURE_PING_LIVENESS in welcome.features and self.ping_interval <= welcome.heartbeat_interval
                )
                if FEATURE_PONG_LIVENESS in welcome.features:  # no pings: a pong after an interval of silence
                    self.pongs = take_pongs(ws, self.ping_interval, welcome.heartbeat_interval)
                await self.serve(ws, welcome.heartbeat_interval, Outbox(self.executor, confirms), pings_count)
            finally:
                self.pongs = None
                self.connected_to = None
                self.disconnected_at = time.monotonic()
                metrics.CONNECTED.set(0)
            log.info("disconnected", url=url, close_code=ws.close_code)
            return ws.close_code

    async def serve(
        self, ws: aiohttp.ClientWebSocketResponse, heartbeat_interval: float, outbox: Outbox, pings_count: bool = False
    ) -> None:
        self.executor.listeners.add(outbox.add)
        for command_id in list(self.executor.running):  # its ack may have been due on a socket now gone
            outbox.ack_later(command_id)
        beats = (
            self.pongs.run(self._send_lock)
            if self.pongs is not None
            else self.send_heartbeats(ws, heartbeat_interval, pings_count)
        )
        senders = [asyncio.create_task(beats), asyncio.create_task(self.send_outbox(ws, outbox))]
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                self.received_at = time.monotonic()
                frame = _decoder.decode(message.data)
                if isinstance(frame, Command):
                    if self.role != "active":
                        log.warning("command_while_standby", command_id=frame.command_id)
                        continue  # not acknowledged: it is redelivered to the active replica
                    if self.stale(frame):
                        continue  # not acknowledged either: the gateway redelivers it under the current epoch
                    self.executor.submit(frame)
                    outbox.ack_later(frame.command_id)
                elif isinstance(frame, Role):
                    if frame.role != self.role:
                        log.info("role", role=frame.role, epoch=frame.epoch, instance_id=self.instance_id)
                    self.role = frame.role
                    self.epoch = max(self.epoch, frame.epoch)
                    self.lease = frame.lease if frame.role == "active" else None
                    metrics.ACTIVE.set(frame.role == "active")
                elif isinstance(frame, Confirm):
                    self.executor.confirmed(frame.command_ids)
                    outbox.confirmed(frame.command_ids)
        finally:
            self.executor.listeners.discard(outbox.add)
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)

    def stale(self, command: Command) -> bool:
        """A command of an older lease term than the newest this process was told (or without an epoch from
        a gateway that speaks HA): refused and logged. A newer epoch is taken as the newest."""
        if not self.fenced:
            return False
        if command.epoch is None or command.epoch < self.epoch:
            log.warning(
                "command_refused_stale_epoch",
                command_id=command.command_id,
                epoch=command.epoch,
                newest_epoch=self.epoch,
                instance_id=self.instance_id,
            )
            metrics.STALE_COMMANDS.inc()
            return True
        self.epoch = command.epoch
        return False

    async def send(self, ws: aiohttp.ClientWebSocketResponse, frame: AgentFrame) -> None:
        async with self._send_lock:
            await ws.send_str(_encoder.encode(frame).decode())
        if self.pongs is not None:
            self.pongs.sent()  # a sign of life already: no pong due for another interval

    async def send_heartbeats(self, ws: aiohttp.ClientWebSocketResponse, interval: float, pings_count: bool) -> None:
        """A heartbeat frame every interval; none while the gateway counts pings (`ping_liveness`) and
        nothing came from it for an interval: then aiohttp pings (it pings after an interval of silence
        from the other side), and that ping is the interval's one liveness frame."""
        while True:
            await asyncio.sleep(interval)
            if pings_count and time.monotonic() - self.received_at >= interval:
                continue
            await self.send(ws, Heartbeat())

    async def send_outbox(self, ws: aiohttp.ClientWebSocketResponse, outbox: Outbox) -> None:
        """Due acks, then everything unconfirmed, window permitting; a failed send loses nothing (the
        results stay unconfirmed with the executor and go out again on the next socket, and a command
        whose ack is lost is redelivered and answered from the journal)."""
        while True:
            await outbox.wake.wait()
            batch = outbox.take()
            for command_id in outbox.take_acks():
                await self.send(ws, Ack(command_id=command_id))
            for result in batch:
                await self.send(ws, result)
            if batch and not outbox.confirms:  # an earlier gateway: written to its socket counts as reported
                self.executor.confirmed([result.command_id for result in batch])
