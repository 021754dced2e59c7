"""Streams (docs/streams.md): a session's desktop (or any TCP endpoint) to the browser, through any replica.

POST /api/v1/sessions/{id}/stream-ticket gives the session's owner (or an admin) a short-lived,
single-use ticket: browsers cannot set headers on a WebSocket, and the long-lived login token must not
go in a URL. The ticket is signed (tickets.py: user, session, expiry), so any replica checks it itself;
Redis only marks its id used (SET NX), so a ticket is used at most once across replicas.

GET /api/v1/sessions/{id}/stream?ticket=... is the browser's WebSocket (subprotocol `binary`, as noVNC's
websockify speaks): binary frames both ways, piped through the agent's data WebSocket (tunnels.py).
While it is open the session counts as used (its idle clock is reset), and it is closed with a reason
when the session stops running (stream_relay.py runs one stream; tickets.py signs and spends tickets).
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import structlog
from aiohttp import web

from streamspace_common import closecodes

from .. import metrics
from ..auth import Caller, Credential
from ..errors import ApiError
from ..revocation import OPEN_STREAMS_KEY, OpenStream, Standing
from ..throttle import client_address
from ..tickets import TICKET_PATTERN, StreamTickets, TicketClaims, TicketRefused
from ..tunnels import MAX_FRAME_BYTES, TunnelBroker
from .base import ApiRoutes, Param, encoded, path_uuid, pool_of, uuid_param
from .sessions import QUERIES as SESSION_QUERIES
from .sessions import visible_session
from .stream_relay import Stream

log = structlog.get_logger("gateway.streams")
routes = ApiRoutes()


class StreamTicket(msgspec.Struct):
    ticket: str  # single-use; pass as `ticket` to the stream WebSocket
    expires_in_seconds: float
    url: str  # the stream WebSocket's path with the ticket, relative to this gateway


class StreamConfig:
    """What the stream endpoints need: the tickets, the tunnel broker, the setup timeout, the open streams."""

    def __init__(self, tickets: StreamTickets, broker: TunnelBroker, setup: float) -> None:
        self.tickets = tickets
        self.broker = broker
        self.setup_timeout = setup
        self.browsers: set[web.WebSocketResponse] = set()  # open streams, closed with 1012 at shutdown

    async def shutdown(self) -> None:
        """This replica is stopping: every stream it holds closes with 1012; the viewer reconnects."""
        for ws in list(self.browsers):
            await ws.close(code=closecodes.SERVICE_RESTART, message=b"gateway restarting: reconnect")


STREAMS_KEY = web.AppKey("streams", StreamConfig)


def require_running(row: asyncpg.Record) -> None:
    if row["state"] != "running" or row["endpoint_host"] is None or row["endpoint_port"] is None:
        raise ApiError(409, "session_not_running", f"the session is {row['state']}; wake it to stream it", "session_id")


@routes.route(
    "POST",
    "/api/v1/sessions/{session_id}/stream-ticket",
    "user",
    summary="A short-lived, single-use ticket for the session's stream WebSocket",
    description=(
        "The session's owner or an administrator. The ticket is valid once, for STREAM_TICKET_TTL seconds, on "
        "any replica; 409 `session_not_running` unless the session is running."
    ),
    status=201,
    reply=StreamTicket,
    params=(uuid_param("session_id"),),
    errors=(404, 409),
)
async def stream_ticket(request: web.Request, caller: Caller) -> web.Response:
    row = await visible_session(request, caller)
    require_running(row)
    tickets = request.app[STREAMS_KEY].tickets
    ticket = tickets.issue(str(row["id"]), caller.user_id, caller.credential)
    url = f"/api/v1/sessions/{row['id']}/stream?ticket={ticket}"
    return encoded(StreamTicket(ticket=ticket, expires_in_seconds=tickets.ttl, url=url), status=201)


@routes.public(
    "GET",
    "/api/v1/sessions/{session_id}/stream",
    summary="The session's stream: a WebSocket of binary frames (websockify-compatible, subprotocol `binary`)",
    description=(
        "Authenticated by `ticket` (POST .../stream-ticket), not by a header. 101 and the stream; 401 for a "
        "missing, used, expired or foreign ticket, or one whose credential ended; 404 for no such session; 409 "
        "`session_not_running`; 400 when the request is not a WebSocket upgrade. Closed with 4000 when the "
        "session ends, 4001 when idle, 4002/4003 when no tunnel could be made, 4004 when the credential the "
        "ticket was asked with ended (the reason says why)."
    ),
    status=101,
    reply=None,
    params=(
        uuid_param("session_id"),
        Param("ticket", "query", {"type": "string", "pattern": TICKET_PATTERN}, "from POST .../stream-ticket"),
    ),
    errors=(401, 404, 409),
)
async def stream(request: web.Request) -> web.StreamResponse:
    session_id = path_uuid(request, "session_id", "session_not_found")
    config = request.app[STREAMS_KEY]
    try:
        # the signature first (no I/O for a forged ticket), then at once: its single use, the session and
        # the standing of the credential it was asked with
        claims = config.tickets.verify(request.query.get("ticket", ""), session_id)
        if claims.crd is None:
            raise ApiError(
                401, "unauthorized", "stream ticket refused: from an earlier release; ask a new one", "ticket"
            )
        row, _, standing = await asyncio.gather(
            pool_of(request).fetchrow(SESSION_QUERIES["get_session"], session_id),
            config.tickets.mark_used(claims),
            request.app[OPEN_STREAMS_KEY].standing_of([claims.sub], [claims.crd]),
        )
    except TicketRefused as exc:
        metrics.STREAMS_REFUSED.labels("ticket").inc()
        log.warning("stream_refused", session_id=session_id, reason=exc.reason, remote=request.remote)
        raise ApiError(401, "unauthorized", f"stream ticket refused: {exc.reason}", "ticket") from exc
    log.info("stream_ticket_redeemed", session_id=session_id, user_id=claims.sub)
    if row is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r}", "session_id")
    require_running(row)
    # compress=False: browsers offer permessage-deflate, and a desktop's frames are compressed already
    ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=MAX_FRAME_BYTES, heartbeat=30.0, compress=False)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "websocket_required", "this endpoint is a WebSocket: send an upgrade request", "Upgrade")
    opened = admitted(request, claims, claims.crd, str(row["user_id"]), ws, standing)
    await ws.prepare(request)
    config.browsers.add(ws)
    request.app[OPEN_STREAMS_KEY].add(opened)
    try:
        await Stream(request, config.broker, config.setup_timeout, row, ws, claims.sub).run()
    finally:
        config.browsers.discard(ws)
        request.app[OPEN_STREAMS_KEY].discard(opened)
    return ws


def admitted(
    request: web.Request,
    claims: TicketClaims,
    credential: Credential,
    owner: str,
    ws: web.WebSocketResponse,
    standing: Standing,
) -> OpenStream:
    """The stream to register; 401 if the credential the ticket was asked with ended since (logout, disable,
    revoked key...)."""
    opened = OpenStream(ws, claims.sub, credential, owner, claims.sid, client_address(request))
    reason = request.app[OPEN_STREAMS_KEY].why(opened, standing)
    if reason is not None:
        metrics.STREAMS_REFUSED.labels("revoked").inc()
        log.warning(
            "stream_refused", user_id=opened.user_id, client=opened.client, session_id=claims.sid, reason=reason
        )
        raise ApiError(401, "unauthorized", f"the credential this ticket was asked with ended: {reason}", "ticket")
    return opened
