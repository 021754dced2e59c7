"""Login: a username and password for a signed, expiring token (see ..auth for the token design).

Failed logins are counted per username on each replica: after LOGIN_FAILURE_LIMIT failures within
LOGIN_FAILURE_WINDOW seconds the username answers 429 (even with the right password, and without
spending a password hash on it) until the oldest failure leaves the window. Per username rather than
per address: behind an ingress every client has the ingress's address. In memory, so each replica
counts on its own: N replicas allow up to N times the limit (docs/api.md).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from streamspace_common.db import load_queries
from streamspace_common.passwords import MAX_LENGTH, verify_password

from .. import audit
from ..auth import AUTH_KEY
from ..errors import ApiError, read_body
from .base import NO_NUL, ApiRoutes, encoded

QUERIES = load_queries("streamspace_gateway.api", "users.sql")
LOGIN_FAILURE_LIMIT = 10
LOGIN_FAILURE_WINDOW = 300.0  # seconds
routes = ApiRoutes()


class LoginThrottle:
    """Recent failed logins per username, on this replica; bounded to `max_names` usernames."""

    def __init__(
        self, limit: int = LOGIN_FAILURE_LIMIT, window: float = LOGIN_FAILURE_WINDOW, max_names: int = 100_000
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_names = max_names
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, username: str, now: float) -> float:
        """Seconds until this username may try again; 0 if it may now."""
        failures = self._failures.get(username)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window - now

    def failed(self, username: str, now: float) -> None:
        self._failures.setdefault(username, deque(maxlen=self.limit)).append(now)
        self._failures.move_to_end(username)
        if len(self._failures) > self.max_names:  # a spray over many names forgets the stalest first
            self._failures.popitem(last=False)

    def succeeded(self, username: str) -> None:
        self._failures.pop(username, None)


THROTTLE_KEY = web.AppKey("login_throttle", LoginThrottle)


class Login(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LENGTH, pattern=NO_NUL)]


class LoginToken(msgspec.Struct):
    token: str  # send as Authorization: Bearer <token>
    expires_at: datetime


@routes.public(
    "POST",
    "/api/v1/auth/login",
    summary="Exchange a username and password for a login token",
    status=200,
    reply=LoginToken,
    body=Login,
    errors=(401, 429),
)
async def login(request: web.Request) -> web.Response:
    body = await read_body(request, Login)
    throttle = request.app[THROTTLE_KEY]
    wait = throttle.retry_after(body.username, time.monotonic())
    if wait > 0:
        message = f"too many failed logins for this username; try again in {math.ceil(wait)} s"
        raise ApiError(429, "too_many_attempts", message, "username", {"Retry-After": str(math.ceil(wait))})
    authenticator = request.app[AUTH_KEY]
    row = await authenticator.pool.fetchrow(QUERIES["user_for_login"], body.username)
    if not await verify_password(None if row is None else row["password_hash"], body.password):
        throttle.failed(body.username, time.monotonic())
        await audit.record(
            authenticator.pool, request, None, "auth.login_failed", body.username, username=body.username
        )
        raise ApiError(401, "unauthorized", "wrong username or password, or the account is disabled")
    throttle.succeeded(body.username)
    await audit.record(
        authenticator.pool, request, None, "auth.login", row["id"], user_id=row["id"], username=body.username
    )
    token, expires_at = authenticator.issue(row["id"], row["role"], row["password_hash"])
    return encoded(LoginToken(token=token, expires_at=expires_at))
