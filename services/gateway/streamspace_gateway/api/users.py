"""Users: administrators manage accounts; everyone may read their own (GET /api/v1/users/me).

PATCH {"disabled": true} disables an account (reversible; its name stays taken): a disabled user can no
longer log in, and their login tokens and API keys are refused at once. DELETE erases the account and
its API keys. An administrator cannot demote, disable or delete their own account, so the last
administrator stays one. Every user may change their own password (POST /api/v1/users/me/password,
with the current one, counted by the login throttle): their earlier login tokens end, the answer is a
new one. What a change ends also closes the streams it opened (migration 0014's NOTIFY, ..revocation).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from streamspace_common.db import load_queries
from streamspace_common.passwords import MAX_LENGTH, MIN_LENGTH, hash_password, verify_password
from streamspace_common.schemas import USERNAME_PATTERN

from .. import audit
from ..auth import Caller, Role
from ..errors import ApiError, read_body
from ..throttle import THROTTLE_KEY, client_address
from .base import NO_NUL, ApiRoutes, encoded, no_content, path_uuid, pool_of, uuid_param, view
from .login import LoginToken, issue, log, reserve

QUERIES = load_queries("streamspace_gateway.api", "users.sql")
REGISTRY = load_queries("streamspace_common", "registry.sql")
routes = ApiRoutes()

Username = Annotated[str, msgspec.Meta(pattern=USERNAME_PATTERN, description="letters, digits, '.', '_', '@', '-'")]
Password = Annotated[str, msgspec.Meta(min_length=MIN_LENGTH, max_length=MAX_LENGTH, pattern=NO_NUL)]


class CreateUser(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    password: Password
    role: Role = "user"


class UpdateUser(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields given change."""

    password: Password | None = None
    role: Role | None = None
    disabled: bool | None = None


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LENGTH, pattern=NO_NUL)]
    new_password: Password


class UserView(msgspec.Struct):
    id: str
    username: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None


class UserList(msgspec.Struct):
    users: list[UserView]


USER_ID = (uuid_param("user_id", route_regex="(?!me$)[^/]+"),)  # /users/me is its own route


def not_found(user_id: str) -> ApiError:
    return ApiError(404, "user_not_found", f"no user {user_id!r}", "user_id")


@routes.route("GET", "/api/v1/users/me", "user", summary="The calling user", status=200, reply=UserView)
async def me(request: web.Request, caller: Caller) -> web.Response:
    row = await pool_of(request).fetchrow(QUERIES["get_user"], caller.user_id)
    if row is None:  # deleted since the caller was resolved
        raise ApiError(401, "unauthorized", "this account no longer exists", "Authorization")
    return encoded(view(row, UserView))


@routes.route(
    "POST",
    "/api/v1/users/me/password",
    "user",
    summary="Change one's own password (the current one is asked); answers a new login token",
    description=(
        "Every login token issued before ends (on every replica), and so do the streams they opened; API keys "
        "stay. 403 `wrong_password` (field `current_password`) for a wrong current password; attempts count "
        "against the same limits as logins (429 `too_many_attempts`, Retry-After)."
    ),
    status=200,
    reply=LoginToken,
    body=PasswordChange,
    errors=(403, 409, 429),
)
async def change_own_password(request: web.Request, caller: Caller) -> web.Response:
    body = await read_body(request, PasswordChange)
    current = await current_hash(request, caller, body.current_password)
    new_hash = await hash_password(body.new_password)
    async with pool_of(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(QUERIES["set_own_password"], caller.user_id, current, new_hash)
        if row is None:
            message = "the password was changed meanwhile; log in again"
            raise ApiError(409, "password_changed", message, "current_password")
        await audit.record(conn, request, caller, "user.password_change", caller.user_id)
    log.info("password_changed", user_id=caller.user_id, client=client_address(request))
    return issue(request, row)


async def current_hash(request: web.Request, caller: Caller, password: str) -> str:
    """The caller's password hash, once `password` is verified against it (counted as a login attempt)."""
    address = client_address(request)
    attempt = await reserve(request, caller.username, address)
    current = await pool_of(request).fetchval(QUERIES["own_password_hash"], caller.user_id)
    if not await verify_password(current, password):
        log.warning("password_change_refused", user_id=caller.user_id, client=address, reason="wrong_password")
        raise ApiError(403, "wrong_password", "the current password is wrong", "current_password")
    await request.app[THROTTLE_KEY].release(attempt)
    return str(current)


@routes.route(
    "POST",
    "/api/v1/users",
    "admin",
    summary="Create a user",
    status=201,
    reply=UserView,
    body=CreateUser,
    errors=(409,),
)
async def create_user(request: web.Request, caller: Caller) -> web.Response:
    body = await read_body(request, CreateUser)
    password_hash = await hash_password(body.password)
    async with pool_of(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(REGISTRY["create_user"], body.username, password_hash, body.role)
        if row is None:
            raise ApiError(409, "username_taken", f"user {body.username!r} already exists", "username")
        detail = {"username": body.username, "role": body.role}
        await audit.record(conn, request, caller, "user.create", row["id"], detail)
    return encoded(view(row, UserView), status=201)


@routes.route("GET", "/api/v1/users", "admin", summary="All users", status=200, reply=UserList)
async def list_users(request: web.Request, _: Caller) -> web.Response:
    rows = await pool_of(request).fetch(QUERIES["list_users"])
    return encoded(UserList(users=[view(row, UserView) for row in rows]))


@routes.route(
    "GET",
    "/api/v1/users/{user_id}",
    "admin",
    summary="One user",
    status=200,
    reply=UserView,
    params=USER_ID,
    errors=(404,),
)
async def get_user(request: web.Request, _: Caller) -> web.Response:
    user_id = path_uuid(request, "user_id", "user_not_found")
    row = await pool_of(request).fetchrow(QUERIES["get_user"], user_id)
    if row is None:
        raise not_found(user_id)
    return encoded(view(row, UserView))


@routes.route(
    "PATCH",
    "/api/v1/users/{user_id}",
    "admin",
    summary="Change a user's password, role or disabled state",
    status=200,
    reply=UserView,
    body=UpdateUser,
    params=USER_ID,
    errors=(404, 409),
)
async def update_user(request: web.Request, caller: Caller) -> web.Response:
    user_id = path_uuid(request, "user_id", "user_not_found")
    body = await read_body(request, UpdateUser)
    if user_id == caller.user_id and (body.role == "user" or body.disabled):
        field = "role" if body.role == "user" else "disabled"
        raise ApiError(409, "own_account", "an administrator cannot demote or disable their own account", field)
    password_hash = None if body.password is None else await hash_password(body.password)
    async with pool_of(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(QUERIES["update_user"], user_id, password_hash, body.role, body.disabled)
        if row is None:
            raise not_found(user_id)
        for action, detail in changes(body):
            await audit.record(conn, request, caller, action, user_id, {"username": row["username"], **detail})
    return encoded(view(row, UserView))


def changes(body: UpdateUser) -> list[tuple[str, dict[str, str]]]:
    """The audit actions of a PATCH: one per kind of change asked for."""
    found: list[tuple[str, dict[str, str]]] = []
    if body.password is not None:
        found.append(("user.password_reset", {}))
    if body.role is not None:
        found.append(("user.role_change", {"role": body.role}))
    if body.disabled is not None:
        found.append(("user.disable" if body.disabled else "user.enable", {}))
    return found


@routes.route(
    "DELETE",
    "/api/v1/users/{user_id}",
    "admin",
    summary="Delete a user and their API keys (their tokens stop working at once)",
    status=204,
    reply=None,
    params=USER_ID,
    errors=(404, 409),
)
async def delete_user(request: web.Request, caller: Caller) -> web.Response:
    user_id = path_uuid(request, "user_id", "user_not_found")
    if user_id == caller.user_id:
        raise ApiError(409, "own_account", "an administrator cannot delete their own account", "user_id")
    async with pool_of(request).acquire() as conn, conn.transaction():
        username = await conn.fetchval(QUERIES["delete_user"], user_id)
        if username is None:
            raise not_found(user_id)
        await audit.record(conn, request, caller, "user.delete", user_id, {"username": username})
    return no_content()
