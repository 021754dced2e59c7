"""One browser stream's life on this replica (docs/streams.md): ask the session's agent for a tunnel
(an OPEN_TUNNEL command), wait for its dial-back (tunnels.py), pipe both ways, keep the session marked as
used while it is open, close it when the session stops running, and write the audit trail."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from streamspace_common import closecodes
from streamspace_common.commands import CommandLifecycle
from streamspace_common.db import load_queries
from streamspace_common.sessions import SessionLifecycle

from .. import audit, metrics
from ..tunnels import PendingTunnel, TunnelBroker, pipe
from .base import pool_of
from .sessions import QUERIES as SESSION_QUERIES

QUERIES = load_queries("streamspace_gateway.api", "stream_relay.sql")
STATE_CHECK = 2.0  # seconds between looks at an open stream's session (closed when it stops running)
log = structlog.get_logger("gateway.streams")


class Stream:
    """One browser stream on this replica: set up the tunnel, pipe, keep the session marked as used."""

    def __init__(
        self,
        request: web.Request,
        broker: TunnelBroker,
        setup_timeout: float,
        row: asyncpg.Record,
        ws: web.WebSocketResponse,
        user_id: str | None = None,  # who streams (the ticket's user): the audit trail's actor
    ) -> None:
        self.request = request
        self.user_id = user_id
        self.pool = pool_of(request)
        self.broker = broker
        self.setup_timeout = setup_timeout
        self.row = row
        self.session_id = str(row["id"])
        self.browser = ws
        self.log = log.bind(session_id=self.session_id, agent_id=row["agent_id"])

    async def run(self) -> None:
        started = time.monotonic()
        token, pending = self.broker.expect(self.row["agent_id"])
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
            self.broker.forget(token)
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
            "url": self.broker.url,
            "token": token,
        }
        timeout = self.setup_timeout
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
