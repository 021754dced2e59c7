"""API keys: long-lived credentials for scripts, one user each, shown once, revocable.

Every signed-in user manages their own; an administrator may list another user's (``?user_id=``) or
everyone's (``?all=true``) and revoke anyone's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from streamspace_common.db import load_queries
from streamspace_common.tokens import hash_token

from .. import audit
from ..auth import Caller, key_prefix, new_api_key, require_admin, require_owner_or_admin
from ..errors import ApiError, read_body
from .base import (
    NO_NUL,
    ApiRoutes,
    Param,
    encoded,
    no_content,
    path_uuid,
    pool_of,
    query_bool,
    query_uuid,
    uuid_param,
    view,
)

QUERIES = load_queries("streamspace_gateway.api", "keys.sql")
routes = ApiRoutes()


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_NUL)]


class KeyCreated(msgspec.Struct):
    id: str
    name: str
    prefix: str
    created_at: datetime
    key: str  # shown this once; only its SHA-256 is stored


class KeyView(msgspec.Struct):
    id: str
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyList(msgspec.Struct):
    keys: list[KeyView]


@routes.route(
    "POST",
    "/api/v1/keys",
    "user",
    summary="Create an API key for the caller (the key is in this answer only)",
    status=201,
    reply=KeyCreated,
    body=CreateKey,
)
async def create_key(request: web.Request, caller: Caller) -> web.Response:
    body = await read_body(request, CreateKey)
    key = new_api_key()
    async with pool_of(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(QUERIES["create_key"], caller.user_id, body.name, key_prefix(key), hash_token(key))
        detail = {"name": body.name, "prefix": row["prefix"]}
        await audit.record(conn, request, caller, "key.create", row["id"], detail)
    return encoded(KeyCreated(key=key, **dict(row)), status=201)


@routes.route(
    "GET",
    "/api/v1/keys",
    "user",
    summary="The caller's API keys; administrators may name another user, or see all keys with all=true",
    status=200,
    reply=KeyList,
    params=(
        Param("user_id", "query", {"type": "string", "format": "uuid"}, "whose keys (another user's: admins only)"),
        Param("all", "query", {"type": "boolean"}, "every user's keys (admins only)"),
    ),
    errors=(403,),
)
async def list_keys(request: web.Request, caller: Caller) -> web.Response:
    user_id = query_uuid(request, "user_id") or caller.user_id
    require_owner_or_admin(caller, user_id)
    if query_bool(request, "all"):
        require_admin(caller)
    rows = await pool_of(request).fetch(QUERIES["list_keys"], None if query_bool(request, "all") else user_id)
    return encoded(KeyList(keys=[view(row, KeyView) for row in rows]))


@routes.route(
    "DELETE",
    "/api/v1/keys/{key_id}",
    "user",
    summary="Revoke an API key (one's own; administrators: anyone's)",
    status=204,
    reply=None,
    params=(uuid_param("key_id"),),
    errors=(403, 404),
)
async def revoke_key(request: web.Request, caller: Caller) -> web.Response:
    key_id = path_uuid(request, "key_id", "key_not_found")
    pool = pool_of(request)
    owner = await pool.fetchval(QUERIES["key_owner"], key_id)
    if owner is None:
        raise ApiError(404, "key_not_found", f"no API key {key_id!r}", "key_id")
    require_owner_or_admin(caller, owner)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["revoke_key"], key_id)
        await audit.record(conn, request, caller, "key.revoke", key_id, {"owner": owner})
    return no_content()
