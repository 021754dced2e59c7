"""Streams (docs/streams.md): a session's desktop (or any TCP endpoint) to the browser, through any replica.

POST /api/v1/sessions/{id}/stream-ticket gives the session's owner (or an admin) a short-lived,
single-use ticket: browsers cannot set headers on a WebSocket, and the long-lived login token must not
go in a URL. The ticket is signed (tickets.py: user, session, expiry), so any replica checks it itself;
Redis only marks its id used (SET NX), so a ticket is used at most once across replicas.

GET /api/v1/sessions/{id}/stream?ticket=... is the browser's WebSocket (subprotocol `binary`, as noVNC's
websockify speaks): binary frames both ways, piped through the agent's data WebSocket (tunnels.py).
While it is open the session counts as used (its idle clock is reset), and it is closed with a reason
when the session stops running.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import msgspec
import redis.asyncio
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from streamspace_common import closecodes
from streamspace_common.commands import CommandLifecycle
from streamspace_common.db import load_queries
from streamspace_common.keys import RedisKeys
from streamspace_common.sessions import SessionLifecycle

from .. import audit, metrics
from ..auth import Caller, Credential
from ..errors import ApiError
from ..revocation import OPEN_STREAMS_KEY, OpenStream, Standing
from ..throttle import client_address
from ..tickets import TICKET_PATTERN, TicketClaims, TicketRefused, TicketSigner
from ..tunnels import MAX_FRAME_BYTES, PendingTunnel, TunnelBroker, pipe
from .base import ApiRoutes, Param, encoded, path_uuid, pool_of, uuid_param
from .sessions import QUERIES as SESSION_QUERIES
from .sessions import visible_session

QUERIES = load_queries("streamspace_gateway.api", "streams.sql")
STATE_CHECK = 2.0  # seconds between looks at an open stream's session (closed when it stops running)
log = structlog.get_logger("gateway.streams")
routes = ApiRoutes()


class StreamTicket(msgspec.Struct):
    ticket: str  # single-use; pass as `ticket` to the stream WebSocket
    expires_in_seconds: float
    url: str  # the stream WebSocket's path with the ticket, relative to this gateway


class StreamConfig:
    """What the stream endpoints need: the ticket signer, Redis (tickets used), the tunnel broker, the timeouts."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        keys: RedisKeys,
        broker: TunnelBroker,
        ticket_ttl: float,
        setup: float,
        signing_secret: bytes,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.signer = TicketSigner(signing_secret)
        self.broker = broker
        self.ticket_ttl = ticket_ttl
        self.setup_timeout = setup
        self.browsers: set[web.WebSocketResponse] = set()  # open streams, closed with 1012 at shutdown

    async def shutdown(self) -> None:
        """This replica is stopping: every stream it holds closes with 1012; the viewer reconnects."""
        for ws in list(self.browsers):
            await ws.close(code=closecodes.SERVICE_RESTART, message=b"gateway restarting: reconnect")

    def issue(self, session_id: str, caller: Caller) -> str:
        return self.signer.issue(session_id, caller.user_id, time.time() + self.ticket_ttl, caller.credential)

    def verify(self, ticket: str, session_id: str) -> TicketClaims:
        """The claims of a ticket we signed, unexpired, for this session (no I/O); TicketRefused otherwise."""
        return self.signer.verify(ticket, session_id, time.time())

    async def mark_used(self, claims: TicketClaims) -> None:
        """Use a verified ticket for the first time (any replica): its id is SET NX in Redis until it
        expires. TicketRefused when it was used already."""
        expires_in = max(1, int((claims.exp - time.time()) * 1000) + 1000)
        try:
            first = await self.redis.set(self.keys.stream_ticket_used(claims.tid), b"1", nx=True, px=expires_in)
        except RedisError as exc:
            raise tickets_unavailable() from exc
        if not first:
            raise TicketRefused("the ticket was used already")


def tickets_unavailable() -> ApiError:
    """Single use is kept in Redis: while it is down no new stream starts (refused rather than letting a
    ticket be used once per replica); open streams go on (they never touch it)."""
    log.warning("stream_refused", reason="Redis (used stream tickets) is unreachable")
    metrics.STREAMS_REFUSED.labels("tickets_unavailable").inc()
    return ApiError(503, "tickets_unavailable", "Redis (used stream tickets) is unreachable; retry")


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
    config = request.app[STREAMS_KEY]
    ticket = config.issue(str(row["id"]), caller)
    url = f"/api/v1/sessions/{row['id']}/stream?ticket={ticket}"
    return encoded(StreamTicket(ticket=ticket, expires_in_seconds=config.ticket_ttl, url=url), status=201)


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
        claims = config.verify(request.query.get("ticket", ""), session_id)
        if claims.crd is None:
            raise ApiError(
                401, "unauthorized", "stream ticket refused: from an earlier release; ask a new one", "ticket"
            )
        row, _, standing = await asyncio.gather(
            pool_of(request).fetchrow(SESSION_QUERIES["get_session"], session_id),
            config.mark_used(claims),
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
        await Stream(request, config, row, ws, claims.sub).run()
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


class Stream:
    """One browser stream on this replica: set up the tunnel, pipe, keep the session marked as used."""

    def __init__(
        self,
        request: web.Request,
        config: StreamConfig,
        row: asyncpg.Record,
        ws: web.WebSocketResponse,
        user_id: str | None = None,  # who streams (the ticket's user): the audit trail's actor
    ) -> None:
        self.request = request
        self.user_id = user_id
        self.pool = pool_of(request)
        self.config = config
        self.row = row
        self.session_id = str(row["id"])
        self.browser = ws
        self.log = log.bind(session_id=self.session_id, agent_id=row["agent_id"])

    async def run(self) -> None:
        started = time.monotonic()
        token, pending = self.config.broker.expect(self.row["agent_id"])
        try:
            await self.serve(started, token, pending)
        finally:
            pending.finished.set()  # the agent's dial-back handler (if it came) returns: its socket is done

    async def serve(self, started: float, token: str, pending: PendingTunnel) -> None:
        try:
            agent = await self.tunnel(token, pending.dialled)
        except TunnelRefused as exc:
            metrics.STREAMS_REFUSED.labels("tunnel").inc()
            self.log.warning("stream_refused", reason=exc.reason)
            await self.browser.close(code=closecodes.STREAM_REFUSED, message=exc.reason.encode()[:120])
            return
        finally:
            self.config.broker.forget(token)
            if not pending.dialled.done():
                pending.dialled.cancel()
            elif not pending.dialled.cancelled() and self.browser.closed:  # dialled just as we gave up
                await pending.dialled.result().close(code=closecodes.STREAM_REFUSED, message=b"stream given up")
        setup = time.monotonic() - started
        metrics.TUNNEL_SETUP.observe(setup)
        metrics.STREAMS_OPEN.inc()
        self.log.info("stream_open", setup_seconds=round(setup, 4))
        # the row is written while the first bytes flow (not before them); awaited before stream.close's
        opened = asyncio.create_task(self.audit("stream.open", {"agent_id": self.row["agent_id"]}))
        watcher = asyncio.create_task(self.keep_used())
        tally: Counter[str] = Counter()
        code, reason = closecodes.STREAM_ERROR, "the stream's handler ended"
        try:
            code, reason = await pipe(self.browser, agent, tally)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            if not self.browser.closed:
                await self.browser.close(code=closecodes.STREAM_ENDED, message=b"the session stopped running")
            await agent.close()
            metrics.STREAMS_OPEN.dec()
            await asyncio.gather(opened, return_exceptions=True)
            seconds = round(time.monotonic() - started, 3)
            sent = {"to_session": tally["to_session"], "to_browser": tally["to_browser"]}  # bytes
            await self.audit(
                "stream.close", {"agent_id": self.row["agent_id"], "seconds": seconds, "code": code, **sent}
            )
        self.log.info("stream_closed", code=code, reason=reason, seconds=seconds)

    async def audit(self, action: str, detail: dict[str, Any]) -> None:
        """One row; a failure to write it is logged, never ends the stream or masks how it ended."""
        try:
            await audit.record(self.pool, self.request, None, action, self.session_id, detail, user_id=self.user_id)
        except (asyncpg.PostgresError, OSError) as exc:
            self.log.error("audit_record_failed", action=action, error=repr(exc))

    async def tunnel(self, token: str, dialled: asyncio.Future[web.WebSocketResponse]) -> web.WebSocketResponse:
        """Ask the agent for OPEN_TUNNEL and wait for its dial-back, its refusal, or the setup timeout."""
        payload: dict[str, Any] = {
            "session_id": self.session_id,
            "host": self.row["endpoint_host"],
            "port": self.row["endpoint_port"],
            "url": self.config.broker.url,
            "token": token,
        }
        timeout = self.config.setup_timeout
        command_id = await self.pool.fetchval(
            QUERIES["open_tunnel"], self.row["agent_id"], payload, max(1, round(timeout))
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return await asyncio.wait_for(asyncio.shield(dialled), 0.25)
            except TimeoutError:
                pass
            state = await self.pool.fetchrow(QUERIES["tunnel_command"], command_id)
            if state is not None and state["status"] in ("failed", "cancelled"):
                raise TunnelRefused(f"the agent refused: {state['error_message'] or state['status']}")
        await CommandLifecycle(self.pool).cancel(command_id, "the stream's tunnel was not set up in time")
        raise TunnelRefused(f"the agent did not dial back within {timeout:g} s (STREAM_SETUP_TIMEOUT)")

    async def keep_used(self) -> None:
        """An open stream is use: reset the session's idle clock (three times per idle timeout, so
        auto-hibernation never takes a watched session), and close the stream within STATE_CHECK seconds
        of the session being asked to stop running (hibernate, stop, delete)."""
        touch_every = min(60.0, max(0.5, self.row["idle_timeout_seconds"] / 3))
        lifecycle = SessionLifecycle(self.pool)
        touched = 0.0
        while True:
            if time.monotonic() - touched >= touch_every:
                row = await lifecycle.touch(self.session_id)
                touched = time.monotonic()
            else:
                row = await self.pool.fetchrow(SESSION_QUERIES["get_session"], self.session_id)
            if row is None or row["desired_state"] != "running":
                state = "deleted" if row is None else f"asked to be {row['desired_state']}"
                await self.browser.close(code=closecodes.STREAM_ENDED, message=f"the session is {state}".encode())
                return
            await asyncio.sleep(min(touch_every, STATE_CHECK))


class TunnelRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
