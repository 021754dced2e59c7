"""An idle agent socket's one liveness frame per interval: an unsolicited pong (issue 27, `pong_liveness`).

With `pong_liveness` in the gateway's welcome the agent stops the pings aiohttp's `heartbeat=` sends and,
after each interval in which it sent nothing, sends a WebSocket pong nobody answers (RFC 6455 5.5.3: a
unidirectional heartbeat). The gateway marks the socket seen on any frame (4410 after 3 intervals without
one, unchanged) and sends nothing on an idle socket: one frame an interval instead of a ping and its pong.

Without a pong coming back, the agent finds a dead gateway host by TCP: TCP_USER_TIMEOUT (3 intervals)
ends the connection when data it sent, its pongs, stays unacknowledged by the peer's kernel that long.
A gateway whose process hangs while its kernel still acknowledges is not found this way: its own
liveness probe (Kubernetes restarts it, and the restart closes its sockets) finds it. That is the trade:
half the frames of every idle socket, against finding a hung (not dead) gateway by the probe's bound
rather than the agent's. SO_KEEPALIVE is not needed: the pongs are data every interval, so the
retransmission timer that TCP_USER_TIMEOUT bounds is running whenever the peer has vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time

import aiohttp

USER_TIMEOUT_INTERVALS = 3  # unacknowledged data for this many intervals ends the connection
SLACK = 0.1  # seconds: a frame sent this much less than an interval ago counts as an interval ago


def stop_pings(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Stop the pings `ws_connect(heartbeat=...)` started (it had to be set before the welcome said whether
    the gateway takes pongs). aiohttp has no public switch for this: it stops as `close()` does."""
    ws._cancel_heartbeat()
    ws._heartbeat = None  # received frames no longer re-arm it


def bound_unacknowledged(ws: aiohttp.ClientWebSocketResponse, interval: float) -> int | None:
    """Set TCP_USER_TIMEOUT (Linux) on the socket's TCP connection: USER_TIMEOUT_INTERVALS intervals, in ms.
    Returns the milliseconds set, or None where the option or the socket is missing."""
    sock = ws.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None:
        return None
    milliseconds = int(USER_TIMEOUT_INTERVALS * interval * 1000)
    sock.setsockopt(socket.IPPROTO_TCP, option, milliseconds)
    return milliseconds


def on_the_second(delay: float) -> float:
    """`delay` stretched (by < 1 s) to end on a whole second of the wall clock. Agents' pongs then reach a
    gateway in bursts it reads in one wakeup of its event loop, not each in a wakeup of its own: at 3,000
    idle sockets, pongs at arbitrary instants cost it more CPU than the pings and pongs they replace, which
    aiohttp's heartbeat rounds up to whole seconds (on the monotonic clock, one host's only)."""
    now = time.time()
    return math.ceil(now + delay) - now


class Pongs:
    """Unsolicited pongs on `ws`, one after each `interval` in which nothing was sent (on a whole second:
    `on_the_second`): whoever sends another frame on the socket calls `sent()`."""

    __slots__ = ("interval", "sent_at", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        self.ws = ws
        self.interval = interval
        self.sent_at = time.monotonic()

    def sent(self) -> None:
        self.sent_at = time.monotonic()

    async def run(self, lock: asyncio.Lock | None = None) -> None:
        due = max(self.interval - SLACK, self.interval / 2)  # a pong just after a whole second: its next on one
        while not self.ws.closed:
            idle = time.monotonic() - self.sent_at
            if idle < due:
                await asyncio.sleep(on_the_second(due - idle))
                continue
            async with lock if lock is not None else contextlib.nullcontext():
                await self.ws.pong()
            self.sent()


def take_pongs(ws: aiohttp.ClientWebSocketResponse, own_interval: float, gateway_interval: float) -> Pongs:
    """The welcome named `pong_liveness`: no more pings on `ws`, unacknowledged data bounded, and the pongs
    to run, at the shorter of the agent's interval and the gateway's."""
    interval = min(own_interval, gateway_interval)
    stop_pings(ws)
    bound_unacknowledged(ws, interval)
    return Pongs(ws, interval)
