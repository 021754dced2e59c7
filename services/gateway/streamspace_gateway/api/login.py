"""Login and logout: a username and password for a signed, expiring token (see ..auth for the token design).

Login attempts are counted across every replica, per username and per client address, from before the
password is checked (..throttle): past the limit the answer is 429 with Retry-After, even with the right
password and without spending a password hash on it. Every refusal is logged with the username, the
client address and the reason. Logout ends the login token it is called with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
import msgspec
import structlog
from aiohttp import web

from streamspace_common.db import load_queries
from streamspace_common.passwords import MAX_LENGTH, verify_password

from .. import audit
from ..auth import AUTH_KEY, Caller, revoke_login
from ..errors import ApiError, read_body
from ..throttle import THROTTLE_KEY, Attempt, client_address
from .base import NO_NUL, ApiRoutes, encoded, no_content, pool_of

QUERIES = load_queries("streamspace_gateway.api", "users.sql")
log = structlog.get_logger("gateway.logins")
routes = ApiRoutes()


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
    description=(
        "429 `too_many_attempts` (header Retry-After, seconds) once LOGIN_FAILURE_LIMIT attempts for the username "
        "or LOGIN_ADDRESS_LIMIT for the client address are counted in the window; an attempt counts from before "
        "its password is checked and is given back when it succeeds."
    ),
    status=200,
    reply=LoginToken,
    body=Login,
    errors=(401, 429),
)
async def login(request: web.Request) -> web.Response:
    body = await read_body(request, Login)
    address = client_address(request)
    attempt = await reserve(request, body.username, address)
    pool = pool_of(request)
    row = await pool.fetchrow(QUERIES["user_for_login"], body.username)
    if not await verify_password(None if row is None else row["password_hash"], body.password):
        reason = "unknown_or_disabled_user" if row is None else "wrong_password"
        log.warning("login_refused", username=body.username, client=address, reason=reason)
        await audit.record(pool, request, None, "auth.login_failed", body.username, username=body.username)
        raise ApiError(401, "unauthorized", "wrong username or password, or the account is disabled")
    await request.app[THROTTLE_KEY].release(attempt)
    await audit.record(pool, request, None, "auth.login", row["id"], user_id=row["id"], username=body.username)
    return issue(request, row)


async def reserve(request: web.Request, username: str, address: str) -> Attempt:
    """Count this attempt before the password is checked; 429 if a limit is reached."""
    attempt = await request.app[THROTTLE_KEY].reserve(username, address)
    if attempt.refused is None:
        return attempt
    wait = attempt.retry_after
    log.warning("login_refused", username=username, client=address, reason=f"too_many_attempts_{attempt.refused}")
    message = f"too many login attempts for this {attempt.refused}; try again in {wait} s"
    raise ApiError(429, "too_many_attempts", message, attempt.refused, {"Retry-After": str(wait)})


def issue(request: web.Request, row: asyncpg.Record) -> web.Response:
    token, expires_at = request.app[AUTH_KEY].issue(row["id"], row["role"], row["password_hash"])
    return encoded(LoginToken(token=token, expires_at=expires_at))


@routes.route(
    "POST",
    "/api/v1/auth/logout",
    "user",
    summary="End the login token this request is made with",
    description=(
        "With a login token: that token is refused from now on, on every replica, and the streams it opened "
        "are closed within seconds. 403 `not_a_login_token` with an API key (revoke it: DELETE /api/v1/keys/{id})."
    ),
    status=204,
    reply=None,
    errors=(403,),
)
async def logout(request: web.Request, caller: Caller) -> web.Response:
    if caller.via != "login":
        message = "log out with a login token; revoke an API key instead"
        raise ApiError(403, "not_a_login_token", message, "Authorization")
    async with pool_of(request).acquire() as conn, conn.transaction():
        await revoke_login(conn, caller)
        await audit.record(conn, request, caller, "auth.logout", caller.user_id)
    log.info("logged_out", user_id=caller.user_id, client=client_address(request))
    return no_content()
