"""Streams on sockets of their own (docs/streams.md): the replica's half of a stream's data path.

A browser's stream lands on any replica. That replica registers a pending tunnel under a single-use
token (kept in this process only: the agent dials back to THIS replica, so no other one needs it),
asks the session's agent for OPEN_TUNNEL through the normal command path, and waits for the agent's
data WebSocket on /api/v1/agents/tunnel, authenticated by X-Tunnel-Token alone: the agent's own token
never travels on a tunnel (the token is 256 random bits, made for this one stream, taken by its first
dial-back and forgotten after STREAM_SETUP_TIMEOUT; docs/security.md). Then `pipe` copies binary
frames between the two sockets. Each direction awaits its send (aiohttp drains the socket past 64 KiB)
before it reads the next frame, and aiohttp stops reading a socket whose unread queue passes 64 KiB,
so a slow browser stalls the agent and the session, never a growing buffer here. A close at either end
closes the other with its code and reason.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from dataclasses import dataclass, field

import structlog
from aiohttp import WSMsgType, web

from streamspace_common import closecodes
from streamspace_common.tokens import hash_token

from . import metrics
from .errors import ApiError

TUNNEL_PATH = "/api/v1/agents/tunnel"
MAX_FRAME_BYTES = 4 * 1024 * 1024
SENDABLE_CLOSE = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011)
log = structlog.get_logger("gateway.tunnels")


@dataclass
class PendingTunnel:
    agent_id: str
    dialled: asyncio.Future[web.WebSocketResponse] = field(default_factory=asyncio.Future)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class TunnelBroker:
    """The tunnels this replica waits for (single-use tokens, in memory) and the agents' dial-back endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url  # where agents reach this replica: ws://host:port/api/v1/agents/tunnel
        self.pending: dict[str, PendingTunnel] = {}

    def expect(self, agent_id: str) -> tuple[str, PendingTunnel]:
        """A new single-use token for `agent_id`'s dial-back, and what its arrival resolves."""
        token = secrets.token_urlsafe(32)
        pending = PendingTunnel(agent_id)
        self.pending[hash_token(token)] = pending
        return token, pending

    def forget(self, token: str) -> None:
        self.pending.pop(hash_token(token), None)

    async def agent_dial(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/agents/tunnel: an agent's data WebSocket for a tunnel this replica asked for. The
        single-use X-Tunnel-Token is the whole credential (no agent token is sent or looked at)."""
        pending = self.pending.pop(hash_token(request.headers.get("X-Tunnel-Token", "")), None)
        if pending is None:
            metrics.STREAMS_REFUSED.labels("tunnel_token").inc()
            log.warning("tunnel_refused", reason="unknown, used or abandoned tunnel token", remote=request.remote)
            raise ApiError(404, "tunnel_not_found", "unknown, used or abandoned tunnel token", "X-Tunnel-Token")
        log.info("tunnel_dialled", agent_id=pending.agent_id, remote=request.remote)
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=None, compress=False)
        await ws.prepare(request)
        if pending.dialled.done():  # the browser gave up meanwhile
            await ws.close(code=closecodes.STREAM_REFUSED, message=b"the browser is gone")
            return ws
        pending.dialled.set_result(ws)
        await pending.finished.wait()  # the browser's handler pipes through this socket until either closes
        return ws


def close_code(code: int | None) -> int:
    """A code that may be sent in a close frame (1005/1006 may not): passed on, or 1000."""
    if code is None:
        return 1000
    return code if code in SENDABLE_CLOSE or 3000 <= code <= 4999 else 1000


async def forward(
    source: web.WebSocketResponse, target: web.WebSocketResponse, direction: str, tally: Counter[str]
) -> tuple[int, str]:
    """Copy binary frames from source to target until source closes; its close code and reason."""
    bytes_counter = metrics.STREAM_BYTES.labels(direction)
    while True:
        message = await source.receive()
        if message.type == WSMsgType.BINARY:
            bytes_counter.inc(len(message.data))
            tally[direction] += len(message.data)
            await target.send_bytes(message.data)
        elif message.type == WSMsgType.CLOSE:
            return close_code(message.data), str(message.extra or "")
        elif message.type == WSMsgType.TEXT:
            return closecodes.BAD_FRAME, "only binary frames are streamed"
        else:  # CLOSING, CLOSED, ERROR: the peer went away without a close frame
            return close_code(source.close_code), "the other end went away"


async def pipe(
    browser: web.WebSocketResponse, agent: web.WebSocketResponse, tally: Counter[str] | None = None
) -> tuple[int, str]:
    """Both directions until either end closes; the other is closed with the same code and reason.
    `tally` counts the bytes each way, by direction (to_session, to_browser)."""
    tally = Counter() if tally is None else tally
    up = asyncio.create_task(forward(browser, agent, "to_session", tally))
    down = asyncio.create_task(forward(agent, browser, "to_browser", tally))
    done, pending = await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
    first = done.pop()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    try:
        code, reason = first.result()
    except Exception as exc:  # a send to a socket that died meanwhile
        code, reason = closecodes.STREAM_ERROR, f"stream error: {exc!r}"
    other = agent if first is up else browser
    await other.close(code=code, message=reason.encode()[:120])
    await (browser if first is up else agent).close(code=code, message=reason.encode()[:120])
    return code, reason
