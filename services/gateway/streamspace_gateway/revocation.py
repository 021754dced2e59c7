"""The streams this replica holds, each with the credential that opened it; closed when that credential ends.

A stream is opened with a single-use ticket, and the ticket with a login token or an API key, whose
Credential travels in the ticket (no secret: the token's SHA-256 or the key's id). Each replica keeps
its own open streams here (a browser's stream lives on whichever replica took it). A round re-reads, in
at most three queries for all of them, the users, API keys and logged-out tokens they depend on, and
closes with 4004 every stream whose credential no longer admits its user (disabled or deleted, role or
password changed, logged out, key revoked) or whose user may no longer watch the session (neither its
owner nor an admin any more). The round runs every STREAM_ACCESS_CHECK seconds, and at once when
PostgreSQL NOTIFYs keys.ACCESS_CHANNEL (migration 0014's triggers fire on any such change, whichever
replica or tool made it); the round re-reads the rows itself, so a lost NOTIFY only delays a close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import structlog
from aiohttp import web

from streamspace_common import closecodes
from streamspace_common.db import load_queries
from streamspace_common.resilience import Outage, forever

from .auth import Credential, login_refusal

QUERIES = load_queries("streamspace_gateway", "revocation.sql")
log = structlog.get_logger("gateway.revocation")


@dataclass(frozen=True, eq=False)
class OpenStream:
    ws: web.WebSocketResponse
    user_id: str  # who watches
    credential: Credential  # what they were let in with
    owner_id: str  # whose session it is
    session_id: str
    client: str  # the browser's address (throttle.client_address), for the log


@dataclass
class Standing:
    """What the open streams' credentials depend on, read in one round."""

    users: dict[str, asyncpg.Record]  # enabled users by id
    live_keys: set[str]
    logged_out: set[str]


class OpenStreams:
    def __init__(self, pool: asyncpg.Pool, secret: bytes, interval: float) -> None:
        self.pool = pool
        self.secret = secret
        self.interval = interval
        self.streams: set[OpenStream] = set()
        self.woken = asyncio.Event()

    def add(self, stream: OpenStream) -> None:
        self.streams.add(stream)

    def discard(self, stream: OpenStream) -> None:
        self.streams.discard(stream)

    def wake(self, _user_id: str) -> None:
        """A credential ended somewhere (the NOTIFY's payload names its user): look now."""
        self.woken.set()

    async def run(self) -> None:
        async def one_round() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), self.interval)
            self.woken.clear()
            await self.close_ended()

        await forever(one_round, Outage("stream_access_round", log), cap=self.interval)

    async def close_ended(self) -> None:
        streams = [stream for stream in self.streams if not stream.ws.closed]
        if not streams:
            return
        standing = await self.standing(streams)
        ended = [(stream, reason) for stream in streams if (reason := self.why(stream, standing)) is not None]
        await asyncio.gather(*(self.close(stream, reason) for stream, reason in ended))  # none waits for another

    async def close(self, stream: OpenStream, reason: str) -> None:
        log.warning(
            "stream_revoked",
            user_id=stream.user_id,
            client=stream.client,
            session_id=stream.session_id,
            credential=stream.credential.kind,
            reason=reason,
        )
        await stream.ws.close(code=closecodes.STREAM_REVOKED, message=reason.encode()[:120])

    async def standing(self, streams: list[OpenStream]) -> Standing:
        return await self.standing_of({stream.user_id: None for stream in streams}, [s.credential for s in streams])

    async def standing_of(self, user_ids: Iterable[str], credentials: list[Credential]) -> Standing:
        """The standing of these users and credentials (a stream about to open reads it while its
        ticket is marked used and its session read)."""
        keys = [c.id for c in credentials if c.kind == "api_key"]
        tokens = [c.id for c in credentials if c.kind == "login"]
        rows, live_keys, logged_out = await asyncio.gather(  # three reads at once (a stream's set-up waits)
            self.pool.fetch(QUERIES["users_in_force"], list(user_ids)),
            self.found("live_api_keys", keys),
            self.found("logged_out_tokens", tokens),
        )
        return Standing({row["id"]: row for row in rows}, live_keys, logged_out)

    async def found(self, query: str, ids: list[str]) -> set[str]:
        return {row[0] for row in await self.pool.fetch(QUERIES[query], ids)} if ids else set()

    def why(self, stream: OpenStream, standing: Standing) -> str | None:
        credential, user = stream.credential, standing.users.get(stream.user_id)
        if credential.kind == "login":
            reason = login_refusal(self.secret, credential, user, credential.id in standing.logged_out)
        elif user is None:
            reason = "the API key's user is disabled or deleted"
        elif credential.id not in standing.live_keys:
            reason = "the API key was revoked"
        else:
            reason = None
        if reason is None and user is not None and stream.user_id != stream.owner_id and user["role"] != "admin":
            reason = "no longer allowed to watch this session"
        return reason


OPEN_STREAMS_KEY = web.AppKey("open_streams", OpenStreams)
