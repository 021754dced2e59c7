"""One agent socket on this replica (AgentConnection) and the refusal that closes one before it registers.

The registry (registry.py) decides which sockets are active, standing by or refused; this module only
holds what a socket is: its hello, its liveness, its lease term and secret, and how frames go out on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from aiohttp import web

from streamspace_common.schemas import FEATURE_CONFIRM, FEATURE_FENCE, FEATURE_HA, FEATURES, Confirm, Frame, Hello

from . import metrics

_encoder = msgspec.json.Encoder()
_SENDING: set[asyncio.Task[None]] = set()  # send_later's tasks until they finish, all sockets (few at a time)


@dataclass(eq=False, slots=True)
class AgentConnection:
    """One agent socket. Kept small (slots, no per-socket containers or bound loggers): a gateway holds
    tens of thousands of them (bench/README.md, "Idle sockets")."""

    hello: Hello
    ws: web.WebSocketResponse
    token_hash: str = ""  # of the agent token it authenticated with
    last_seen: float = field(default_factory=time.monotonic)
    registered_at: datetime | None = None  # agents.connected_at as its registration wrote it
    waiting: int = 0  # acks and results read from this socket and not yet committed
    epoch: int | None = None  # HA: the lease epoch of its last active term (0: never active); None: no HA
    registered: bool = False  # the registry admitted it: only then does its leaving change anything
    proof_hash: str | None = None  # hash of the lease secret it presented on connect (LEASE_HEADER)
    lease_hash: str | None = None  # hash of the lease secret this replica gave it with its last active role
    moving: bool = False  # asked to move (rebalance.py): its lease is vacated, not released, when it closes
    # Read for every socket in every upkeep round: looked up in the hello's features once, not each time.
    ha: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ha = FEATURE_HA in self.hello.features

    @property
    def agent_id(self) -> str:
        return self.hello.agent_id

    @property
    def features(self) -> list[str]:
        """The optional protocol features both sides use on this socket (none for an earlier agent)."""
        return [feature for feature in FEATURES if feature in self.hello.features]

    @property
    def confirms(self) -> bool:
        return FEATURE_CONFIRM in self.hello.features

    @property
    def fences(self) -> bool:
        return FEATURE_FENCE in self.hello.features and self.ha

    @property
    def instance_id(self) -> str:
        return self.hello.instance_id

    def mark_seen(self) -> None:
        now = time.monotonic()
        metrics.HEARTBEAT_GAP.observe(now - self.last_seen)
        self.last_seen = now

    def send_confirm(self, frame: Confirm) -> None:
        self.send_later(frame)  # if closed, the agent resends what it has not had confirmed on its next socket
        metrics.CONFIRMS_SENT.inc()

    def send_later(self, frame: Frame) -> None:
        """Send without waiting (a slow agent must not stall the caller); nothing if the socket closed."""
        if self.ws.closed:
            return
        task = asyncio.create_task(self._send(_encoder.encode(frame).decode()))
        _SENDING.add(task)
        task.add_done_callback(_SENDING.discard)

    async def send(self, frame: Frame) -> None:
        await self._send(_encoder.encode(frame).decode())

    async def _send(self, text: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)


class Refused(Exception):
    """A socket the registry will not register: closed with `code`, and the reason logged."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
