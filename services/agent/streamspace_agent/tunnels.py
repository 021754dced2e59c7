"""OPEN_TUNNEL: the agent's end of a stream's data path (docs/streams.md).

The gateway replica that holds a browser asks, through the normal command path, for a tunnel; the
agent connects to the session's endpoint (TCP), dials a data WebSocket back to that replica with the
single-use tunnel token, answers the command, and pipes bytes both ways in the background: binary
frames on the WebSocket, raw bytes on TCP, no encoding. The command socket carries none of them.

What the agent checks first (docs/security.md, "Streams and tunnels"), refusing the command otherwise:
the dial-back URL's scheme, host and port are those of one of its GATEWAY_URLS (or, with
TUNNEL_NETWORKS, an address in those networks on a gateway's scheme and port), and it is wss:// when
any gateway is; the endpoint is the one its driver reports for that session, running. The dial-back
carries the tunnel token only: the agent's own token never leaves the control socket.

Backpressure: each direction reads a chunk (from the session: what arrived, at most 64 KiB, as one
frame, with no copy: session_socket.py), writes it, and waits for the write to drain before it
reads again (aiohttp's WebSocket reader stops reading its socket when its queue holds 64 KiB), so a
slow reader at either end stalls the other end instead of growing a buffer here. Either end closing
(or an error) closes the other, with the reason; no byte either way for STREAM_IDLE_TIMEOUT closes
both. At most STREAM_MAX_PER_SESSION streams of one session and STREAM_MAX_PER_AGENT in all are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import Counter
from typing import Any, cast

import aiohttp
import msgspec
import structlog
import yarl

from streamspace_common import closecodes
from streamspace_common.actions import Endpoint, OpenTunnel
from streamspace_common.schemas import Command

from . import metrics
from .drivers import CommandFailed, Driver
from .session_socket import SessionSocket

FRAME = 64 * 1024  # the most sent as one frame: larger ones are stored whole at each hop before going on
WAITING = 256 * 1024  # read from the session's socket and not yet sent: past this, reading pauses
MAX_FRAME_BYTES = 4 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
log = structlog.get_logger("agent.tunnels")
Origin = tuple[str, str, int]  # scheme (ws or wss), host, port
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def origin(url: str) -> Origin | None:
    """The scheme, host and port a URL reaches (http -> ws, https -> wss; the scheme's default port if
    none is written); None for anything that is not a ws(s)/http(s) URL with a host."""
    try:
        parsed = yarl.URL(url.strip())
        port = parsed.port
    except ValueError:
        return None
    scheme = {"http": "ws", "https": "wss"}.get(parsed.scheme, parsed.scheme)
    if scheme not in ("ws", "wss") or not parsed.host or port is None:
        return None
    return scheme, parsed.host.lower().rstrip("."), port


def gateway_origins(gateway_urls: str) -> set[Origin]:
    """Where the agent may dial a tunnel back to: its GATEWAY_URLS, compared by scheme, host and port."""
    origins = {o for o in map(origin, filter(None, (u.strip() for u in gateway_urls.split(",")))) if o is not None}
    if not origins:
        raise ValueError("GATEWAY_URLS names no gateway")
    return origins


def networks(tunnel_networks: str) -> list[Network]:
    """TUNNEL_NETWORKS: comma-separated CIDRs; ValueError for a malformed one."""
    try:
        return [ipaddress.ip_network(part.strip()) for part in tunnel_networks.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"TUNNEL_NETWORKS: {exc}") from exc


class Tunnels:
    def __init__(
        self,
        driver: Driver,
        gateway_urls: str,
        idle_timeout: float,
        max_per_session: int,
        max_per_agent: int,
        tunnel_networks: str = "",
    ) -> None:
        self.driver = driver
        self.gateways = gateway_origins(gateway_urls)
        self.networks = networks(tunnel_networks)
        self.tls = any(scheme == "wss" for scheme, _, _ in self.gateways)  # then tunnels are wss only
        self.idle_timeout = idle_timeout
        self.max_per_session = max_per_session
        self.max_per_agent = max_per_agent
        self.per_session: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    @property
    def open_count(self) -> int:
        return sum(self.per_session.values())

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            # no default headers: the agent token is for the control socket only
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._http

    def allowed(self, url: str) -> str | None:
        """Why a dial-back to `url` is refused, or None when it goes to one of our gateways."""
        target = origin(url)
        if target is None:
            return "the tunnel URL is not a ws:// or wss:// URL with a host"
        scheme, host, port = target
        if self.tls and scheme != "wss":
            return "the control socket uses TLS (GATEWAY_URLS name wss/https), so a tunnel must be wss://"
        if target in self.gateways:
            return None
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            address = None
        if (
            address is not None
            and any(address in network for network in self.networks)
            and any((scheme, port) == (s, p) for s, _, p in self.gateways)
        ):
            return None
        return f"{scheme}://{host}:{port} is not one of GATEWAY_URLS (nor in TUNNEL_NETWORKS on a gateway's port)"

    async def session_endpoint(self, session_id: str) -> Endpoint | None:
        """Where the session runs, as this agent's driver finds it; None unless it runs here."""
        try:
            items = await self.driver.inventory()
        except Exception as exc:  # the platform's API: the command fails with the reason
            raise CommandFailed(f"cannot list this agent's sessions: {exc!r}") from exc
        for item in items:
            if item.session_id == session_id and item.state == "running":
                return item.endpoint
        return None

    def refuse(self, command: Command, session_id: str, reason: str) -> CommandFailed:
        log.warning("tunnel_refused", command_id=command.command_id, session_id=session_id, reason=reason)
        metrics.TUNNELS_REFUSED.inc()
        return CommandFailed(f"OPEN_TUNNEL refused: {reason}")

    async def open(self, command: Command) -> dict[str, Any]:
        """Check the ends, connect both and start piping; the command's result says it is open."""
        try:
            spec = msgspec.convert(command.payload, OpenTunnel)
        except msgspec.ValidationError as exc:
            raise CommandFailed(f"invalid OPEN_TUNNEL payload: {exc}") from exc
        if (reason := self.allowed(spec.url)) is not None:
            raise self.refuse(command, spec.session_id, reason)
        endpoint = await self.session_endpoint(spec.session_id)
        if endpoint is None:
            reason = f"session {spec.session_id} does not run on this agent (or has no endpoint)"
            raise self.refuse(command, spec.session_id, reason)
        if (endpoint.host.lower(), endpoint.port) != (spec.host.lower(), spec.port):
            reason = f"{spec.host}:{spec.port} is not session {spec.session_id}'s endpoint"
            raise self.refuse(command, spec.session_id, reason)
        if self.per_session[spec.session_id] >= self.max_per_session:
            raise CommandFailed(f"session {spec.session_id} has {self.max_per_session} streams open already")
        if self.open_count >= self.max_per_agent:
            raise CommandFailed(f"this agent has {self.max_per_agent} streams open already")
        self.per_session[spec.session_id] += 1  # counted from now on, so a burst cannot pass the limit
        try:
            session, ws = await self._connect(spec)
        except BaseException:
            self._release(spec.session_id)
            raise
        task = asyncio.create_task(self._pipe(spec, session, ws))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return {"session_id": spec.session_id, "tunnel": "open"}

    async def _connect(self, spec: OpenTunnel) -> tuple[SessionSocket, aiohttp.ClientWebSocketResponse]:
        try:
            session = await asyncio.wait_for(SessionSocket.connect(spec.host, spec.port, WAITING), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise CommandFailed(f"cannot reach the session at {spec.host}:{spec.port}: {exc!r}") from exc
        try:
            ws = await self.http().ws_connect(
                spec.url,
                headers={"X-Tunnel-Token": spec.token},
                max_msg_size=MAX_FRAME_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
                autoping=True,
                compress=0,  # no per-message deflate: a desktop's frames are compressed already
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            session.close()
            raise CommandFailed(f"cannot dial the gateway back at {spec.url.split('?')[0]}: {exc!r}") from exc
        return session, ws

    def _release(self, session_id: str) -> None:
        self.per_session[session_id] -= 1
        if self.per_session[session_id] <= 0:
            del self.per_session[session_id]

    async def _pipe(
        self,
        spec: OpenTunnel,
        session: SessionSocket,
        ws: aiohttp.ClientWebSocketResponse,
    ) -> None:
        bound = log.bind(session_id=spec.session_id)
        metrics.TUNNELS_OPEN.inc()
        last = [time.monotonic()]
        ending: list[tuple[int, str]] = []
        started = time.monotonic()

        to_gateway_bytes = metrics.TUNNEL_BYTES.labels("to_gateway")  # bound once, not per frame
        to_session_bytes = metrics.TUNNEL_BYTES.labels("to_session")

        async def to_gateway() -> None:
            while data := await session.read(FRAME):
                last[0] = time.monotonic()
                to_gateway_bytes.inc(len(data))
                await ws.send_bytes(cast(bytes, data))  # a memoryview is sent as is (typed bytes only)
            ending.append((closecodes.STREAM_ENDED, "the session closed the connection"))

        async def to_session() -> None:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    ending.append((closecodes.BAD_FRAME, "only binary frames are streamed"))
                    return
                last[0] = time.monotonic()
                to_session_bytes.inc(len(message.data))
                session.write(message.data)
                await session.drain()
            ending.append((ws.close_code or 1000, "the gateway closed the stream"))

        async def idle() -> None:
            # a deadline that moves with every byte: sleep until it, then look again
            while (remaining := last[0] + self.idle_timeout - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(remaining)
            ending.append((closecodes.STREAM_IDLE, f"no byte either way for {self.idle_timeout:g} s"))

        tasks = [asyncio.create_task(job()) for job in (to_gateway, to_session, idle)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and (error := task.exception()) is not None:
                    ending.append((closecodes.STREAM_ERROR, f"stream error: {error!r}"[:120]))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            code, reason = ending[0] if ending else (closecodes.STREAM_ERROR, "the agent is stopping")
            with contextlib.suppress(Exception):
                await ws.close(code=code, message=reason.encode()[:120])
            session.close()
            self._release(spec.session_id)
            metrics.TUNNELS_OPEN.dec()
            bound.info("tunnel_closed", code=code, reason=reason, seconds=round(time.monotonic() - started, 3))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
