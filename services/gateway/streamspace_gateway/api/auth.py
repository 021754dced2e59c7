"""Login: a username and password for a signed, expiring token (see ..auth for the token design)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from streamspace_common.db import load_queries
from streamspace_common.passwords import MAX_LENGTH, verify_password

from ..auth import AUTH_KEY
from ..errors import ApiError, read_body
from .base import NO_NUL, ApiRoutes, encoded

QUERIES = load_queries("streamspace_gateway.api", "users.sql")
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
    status=200,
    reply=LoginToken,
    body=Login,
    errors=(401,),
)
async def login(request: web.Request) -> web.Response:
    body = await read_body(request, Login)
    authenticator = request.app[AUTH_KEY]
    row = await authenticator.pool.fetchrow(QUERIES["user_for_login"], body.username)
    if not await verify_password(None if row is None else row["password_hash"], body.password):
        raise ApiError(401, "unauthorized", "wrong username or password, or the account is disabled")
    token, expires_at = authenticator.issue(row["id"], row["role"], row["password_hash"])
    return encoded(LoginToken(token=token, expires_at=expires_at))
