"""The agent WebSocket endpoint: token auth, hello handshake, then acks and results (§3).

Every frame is one msgspec-typed JSON object. A frame that is not valid JSON, has an unknown
type or wrong fields closes the socket with 4400 and a reason, and changes nothing stored.
The read loop never waits on PostgreSQL: acks and results go to the replica's FrameWriter.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from aiohttp import WSMessage, WSMsgType, web

from streamspace_common import closecodes
from streamspace_common.schemas import LEASE_HEADER, MOVING_HEADER, Ack, AgentFrame, Hello, Result, Welcome
from streamspace_common.tokens import hash_token

from . import metrics
from .agent_tokens import AgentTokens
from .connection import AgentConnection, Refused
from .errors import ApiError
from .rebalance import REBALANCER_KEY
from .registry import REGISTRY_KEY, AgentRegistry
from .writer import MAX_WAITING_PER_SOCKET, FrameWriter

log = structlog.get_logger("gateway.socket")
HELLO_TIMEOUT = 10.0
MAX_FRAME_BYTES = 1024 * 1024
_decoder = msgspec.json.Decoder(AgentFrame)
_encoder = msgspec.json.Encoder()


class FrameRejected(Refused):
    """A frame the socket will not take: closed with `code`, and the reason logged."""


def decode_frame(message: WSMessage) -> AgentFrame:
    if message.type != WSMsgType.TEXT:
        raise FrameRejected(closecodes.BAD_FRAME, "only text frames holding one JSON object are accepted")
    try:
        frame: AgentFrame = _decoder.decode(message.data)
        return frame
    except msgspec.ValidationError as exc:
        raise FrameRejected(closecodes.BAD_FRAME, f"invalid frame: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise FrameRejected(closecodes.BAD_FRAME, f"frame is not valid JSON: {exc}") from exc


async def authenticate(request: web.Request, tokens: AgentTokens) -> tuple[str, str, bool]:
    """The agent id the bearer token belongs to, the token's hash (the socket keeps it: a revoked or
    expired token closes its sockets) and whether the agent was deleted (its socket is refused after
    hello, 4404). An old token inside its rotation overlap works, with a warning."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <agent token>", "Authorization")
    token_hash = hash_token(token.strip())
    row = await tokens.agent_for_token(token_hash)
    if row is None:
        log.warning("agent_token_refused", token_prefix=token_hash[:12], remote=request.remote)
        raise ApiError(401, "unauthorized", "unknown, revoked or expired agent token", "Authorization")
    agent_id = str(row["agent_id"])
    if row["superseded_at"] is not None:
        log.warning(
            "agent_token_in_overlap",
            agent_id=agent_id,
            token_prefix=token_hash[:12],
            superseded_at=row["superseded_at"].isoformat(),
            expires_at=None if row["expires_at"] is None else row["expires_at"].isoformat(),
            hint="an old agent token was used: give the agent its new token before the overlap ends",
        )
    return agent_id, token_hash, row["deleted_at"] is not None


async def agent_connect(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY_KEY]
    if registry.closing:
        raise ApiError(503, "shutting_down", "this gateway replica is shutting down")
    token_agent_id, token_hash, deleted = await authenticate(request, registry.store.tokens)
    rebalancer = request.app.get(REBALANCER_KEY)
    if request.headers.get(MOVING_HEADER) and rebalancer is not None and not rebalancer.takes_mover():
        metrics.MOVERS_REFUSED.inc()
        raise ApiError(409, "above_fair_share", "this replica holds its fair share: try another", MOVING_HEADER)
    # No server-side pings: the agent's heartbeat frames show it is alive (4410 after 3 intervals without
    # a frame) and its own pings find a dead gateway. At 10,000 idle sockets the gateway's pings were a
    # sixth of its CPU, and their pong deadline (half an interval) closed the sockets of agents whose
    # host was merely busy, which then all reconnected.
    # Pings are answered here, not by aiohttp (autoping off), so that each one marks the socket seen: an
    # idle agent that announced "ping_liveness" sends its ping and no heartbeat frame; one that announced
    # "pong_liveness" sends an unsolicited pong, which marks it seen as well and is not answered (one frame an
    # interval, nothing back: docs/control-plane.md).
    # No permessage-deflate: the frames are small JSON; declining it saves each socket a zlib compressor
    # and decompressor and every frame a deflate or inflate. An agent that offers it gets a handshake
    # without it and sends plain frames (RFC 7692: the server may decline).
    ws = web.WebSocketResponse(heartbeat=None, autoping=False, max_msg_size=MAX_FRAME_BYTES, compress=False)
    await ws.prepare(request)
    try:
        hello = await receive_hello(ws, token_agent_id)
        if deleted:
            raise FrameRejected(closecodes.AGENT_DELETED, "this agent was deleted (drained): its id is retired")
    except FrameRejected as exc:
        return await reject(ws, exc, token_agent_id)
    conn = AgentConnection(hello=hello, ws=ws, token_hash=token_hash)
    lease_secret = request.headers.get(LEASE_HEADER, "").strip()
    conn.proof_hash = hash_token(lease_secret) if lease_secret else None
    try:
        await registry.admit(conn)  # refused before its welcome: it never looks connected
    except Refused as exc:
        return await reject(ws, exc, token_agent_id, hello.instance_id)
    try:
        # Welcome first: once registered, commands may arrive, and the agent expects welcome before any.
        welcome = Welcome(pod=registry.pod, heartbeat_interval=registry.heartbeat_interval, features=conn.features)
        await ws.send_str(_encoder.encode(welcome).decode())
        await registry.register(conn)
        log.info(
            "agent_connected",
            agent_id=token_agent_id,
            platform=hello.platform,
            version=hello.version,
            instance_id=hello.instance_id,
            features=conn.features,
            running=len(hello.running),
            unreported=len(hello.unreported),
        )
        await read_frames(ws, conn, registry)
    except Refused as exc:
        await reject(ws, exc, token_agent_id, hello.instance_id)
    finally:
        await registry.unregister(conn)
        log.info("agent_disconnected", agent_id=token_agent_id, instance_id=hello.instance_id, close_code=ws.close_code)
    return ws


async def receive_hello(ws: web.WebSocketResponse, token_agent_id: str) -> Hello:
    try:
        async with asyncio.timeout(HELLO_TIMEOUT):
            message = await ws.receive()
            while message.type in (WSMsgType.PING, WSMsgType.PONG):  # a ping before the hello
                await answer_ping(ws, message)
                message = await ws.receive()
    except TimeoutError as exc:
        raise FrameRejected(closecodes.HELLO_TIMEOUT, "no hello frame in time") from exc
    frame = decode_frame(message)
    if not isinstance(frame, Hello):
        raise FrameRejected(closecodes.BAD_FRAME, "the first frame must be hello")
    if frame.agent_id != token_agent_id:
        raise FrameRejected(closecodes.FORBIDDEN, "the token does not belong to this agent id")
    return frame


async def read_frames(ws: web.WebSocketResponse, conn: AgentConnection, registry: AgentRegistry) -> None:
    """Read and queue, never wait: aiohttp answers the agent's pings only while we are in receive().

    An ack or result from an HA socket that is not the active one here is logged as refused; it is still
    queued, stamped with the socket's epoch, so the writer's statement refuses it (the lease's epoch in
    PostgreSQL is the authority, across replicas) and confirms it, and the replica forgets it."""
    writer: FrameWriter = registry.writer
    async for message in ws:
        if message.type in (WSMsgType.ERROR, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return
        conn.mark_seen()
        if message.type in (WSMsgType.PING, WSMsgType.PONG):
            await answer_ping(ws, message)
            continue
        frame = decode_frame(message)
        if isinstance(frame, Ack | Result) and conn.ha and not registry.is_active(conn):
            log.warning(
                "frame_refused_not_active",
                agent_id=conn.agent_id,
                instance_id=conn.instance_id,
                command_id=frame.command_id,
                kind=frame.__struct_config__.tag,
                epoch=conn.epoch,
            )
        if isinstance(frame, Ack):
            writer.ack(conn, frame.command_id)
        elif isinstance(frame, Result):
            writer.result(conn, frame)
        elif isinstance(frame, Hello):
            raise FrameRejected(closecodes.BAD_FRAME, "hello was already received")
        # Heartbeat: marking the socket seen is all it does.
        if conn.waiting > MAX_WAITING_PER_SOCKET:  # a bound for agents that keep no window (none of ours)
            raise FrameRejected(closecodes.OVERLOADED, "too many acks and results waiting to be written")


async def answer_ping(ws: web.WebSocketResponse, message: WSMessage) -> None:
    """What aiohttp's autoping did: a pong for a ping (an unsolicited pong needs nothing)."""
    if message.type == WSMsgType.PING:
        await ws.pong(message.data)


async def reject(
    ws: web.WebSocketResponse, exc: Refused, agent_id: str, instance_id: str | None = None
) -> web.WebSocketResponse:
    metrics.FRAMES_REJECTED.labels(str(exc.code)).inc()
    log.warning(
        "agent_frame_rejected", agent_id=agent_id, instance_id=instance_id, close_code=exc.code, reason=exc.reason
    )
    # A close reason must fit in a control frame (123 bytes).
    await ws.close(code=exc.code, message=exc.reason.encode()[:123])
    return ws
