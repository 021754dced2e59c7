"""Stream tickets (docs/streams.md, docs/security.md "Streams and tunnels"): signed, then used once.

A ticket is ``sstk_<claims>.<signature>``: the claims (a random ticket id, the session, the user, the
expiry) signed with HMAC-SHA256 under a key derived from the gateways' signing secret (AUTH_SECRET, or
the one the gateways share in PostgreSQL: auth.signing_secret), so every replica checks a ticket
itself and a ticket can never pass for a login token nor the reverse. Redis holds no ticket: it only
marks a ticket id used (SET NX), which makes a ticket single-use across replicas. Whoever can write
to Redis can at most burn a ticket, never make one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

import msgspec
import redis.asyncio
import structlog
from redis.exceptions import RedisError

from streamspace_common.keys import RedisKeys

from . import metrics
from .auth import Credential
from .errors import ApiError

TICKET_PREFIX = "sstk_"
TICKET_PATTERN = r"^sstk_[A-Za-z0-9_-]{1,600}\.[A-Za-z0-9_-]{43}$"
KEY_LABEL = b"streamspace stream ticket v1"  # derives the ticket key from the signing secret
log = structlog.get_logger("gateway.streams")


class TicketClaims(msgspec.Struct, forbid_unknown_fields=True):
    tid: str  # random ticket id: what Redis marks used
    sid: str  # the session it opens
    sub: str  # the user it was issued to
    exp: float  # unix seconds
    # what the ticket was asked with: its end closes the stream (..revocation); None in a ticket of an
    # earlier release, which opens nothing
    crd: Credential | None = None


class TicketRefused(Exception):
    """Why a ticket opens nothing (logged; the browser gets 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ticket_key(signing_secret: bytes) -> bytes:
    """The stream-ticket key: rotating the signing secret rotates it too (docs/api.md)."""
    return hmac.new(signing_secret, KEY_LABEL, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TicketSigner:
    def __init__(self, signing_secret: bytes) -> None:
        self.key = ticket_key(signing_secret)

    def _sign(self, claims: str) -> bytes:
        return hmac.new(self.key, claims.encode(), hashlib.sha256).digest()

    def issue(self, session_id: str, user_id: str, expires: float, credential: Credential) -> str:
        """A new ticket for `user_id` to open `session_id` until `expires` (unix seconds), asked with `credential`."""
        claims = TicketClaims(tid=secrets.token_urlsafe(16), sid=session_id, sub=user_id, exp=expires, crd=credential)
        encoded = _b64(msgspec.json.encode(claims))
        return f"{TICKET_PREFIX}{encoded}.{_b64(self._sign(encoded))}"

    def verify(self, ticket: str, session_id: str, now: float) -> TicketClaims:
        """The claims of a ticket signed by us, unexpired, for `session_id`; else TicketRefused. Whether it
        was used already is Redis's part (the caller's)."""
        if not ticket:
            raise TicketRefused("no ticket")
        encoded, _, signature = ticket.removeprefix(TICKET_PREFIX).partition(".")
        try:
            valid = ticket.startswith(TICKET_PREFIX) and hmac.compare_digest(_unb64(signature), self._sign(encoded))
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise TicketRefused("not signed by a gateway (forged, mangled, or from before a key rotation)")
        claims = msgspec.json.decode(_unb64(encoded), type=TicketClaims)  # signed by us, so well-formed
        if claims.exp <= now:
            raise TicketRefused("the ticket expired")
        if claims.sid != session_id:
            raise TicketRefused("the ticket is for another session")
        return claims


class StreamTickets:
    """Tickets issued and checked on this replica (no I/O), and used once across replicas (Redis)."""

    def __init__(self, redis_client: redis.asyncio.Redis, keys: RedisKeys, ttl: float, signing_secret: bytes) -> None:
        self.redis = redis_client
        self.keys = keys
        self.ttl = ttl
        self.signer = TicketSigner(signing_secret)

    def issue(self, session_id: str, user_id: str, credential: Credential) -> str:
        return self.signer.issue(session_id, user_id, time.time() + self.ttl, credential)

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
