"""Commands (§6): create one for an agent, read one back with its attempts, list them, cancel one.
Administrators only: the low-level API under the sessions a user will drive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, get_args

import asyncpg
import msgspec
from aiohttp import web
from msgspec import UNSET, UnsetType

from streamspace_common.actions import CANCEL_COMMAND, OPEN_TUNNEL
from streamspace_common.commands import CommandLifecycle
from streamspace_common.db import load_queries
from streamspace_common.schemas import ID_PATTERN, Action, CommandStatus

from .. import audit
from ..auth import Caller
from ..errors import ApiError, read_body
from .base import (
    NO_NUL,
    ApiRoutes,
    JsonObject,
    Param,
    encoded,
    identifier,
    path_identifier,
    pool_of,
    read_query,
    view,
)
from .paging import PAGE_PARAMS, RFC3339, read_cursor, rfc3339, unset_as_none, write_cursor

QUERIES = load_queries("streamspace_gateway.api", "commands.sql")
_STATUS = "(" + "|".join(get_args(CommandStatus)) + ")"
STATUS_LIST = f"^{_STATUS}(,{_STATUS})*$(?!\\n)"
RESERVED_ACTIONS = (OPEN_TUNNEL, CANCEL_COMMAND)
MAX_EXPIRY = 365 * 86400
COMMAND_EXPIRY_KEY = web.AppKey("command_expiry", int)  # COMMAND_EXPIRY: seconds, 0 = never
routes = ApiRoutes()


class CreateCommand(msgspec.Struct, forbid_unknown_fields=True):
    action: Action
    payload: JsonObject = {}
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=NO_NUL)] | None = None
    command_id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)] | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    # seconds from the agent's ack to its result before a retry; None: the dispatchers' COMMAND_TIMEOUT
    timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)] | None = None
    # still pending then, it ends `expired` instead of waiting for its agent; neither: COMMAND_EXPIRY (0: never)
    expires_in_seconds: Annotated[int, msgspec.Meta(ge=1, le=MAX_EXPIRY)] | None = None
    expires_at: RFC3339 | None = None  # with both, the earlier one applies; one in the past: at the next sweep


class CreatedCommand(msgspec.Struct):
    command_id: str


class CommandView(msgspec.Struct):
    id: str
    command_id: str
    agent_id: str
    session_id: str | None
    action: str
    payload: dict[str, Any]
    status: CommandStatus
    error_message: str | None
    result: dict[str, Any] | None
    attempts: int
    max_attempts: int
    timeout_seconds: int | None
    expires_at: datetime | None
    next_attempt_at: datetime | None
    dispatched_by: str | None
    delivered_via_pod: str | None
    created_at: datetime
    sent_at: datetime | None
    acknowledged_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class AttemptView(msgspec.Struct):
    """An attempt that ended in a retry (outcome pending), a failure or a cancel."""

    attempt: int
    left_status: str  # sent: never acknowledged; acknowledged: acknowledged, then no (good) result
    outcome: str
    reason: str | None
    dispatched_by: str | None
    delivered_via_pod: str | None
    sent_at: datetime | None
    acknowledged_at: datetime | None
    ended_at: datetime


class CommandDetail(CommandView):
    attempt_history: list[AttemptView] = []


class CancelledCommand(CommandView):
    # the CANCEL_COMMAND sent to stop it on its agent (it was sent or acknowledged, and the agent runs
    # CANCEL_COMMAND); None: nothing runs it there, or the agent's release cannot stop it (it finishes,
    # and its result is discarded)
    cancel_command_id: str | None = None


class CommandPage(msgspec.Struct):
    commands: list[CommandView]
    next_cursor: str | None  # pass as `cursor` for the next page; None: this was the last


class CancelCommand(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000, pattern=NO_NUL)] = "cancelled by an operator"


class CommandFilter(msgspec.Struct, forbid_unknown_fields=True):
    """GET /api/v1/commands query parameters. Absent is UNSET, not None: from a query string, lax
    conversion would read the text "null" as None."""

    status: str | UnsetType = UNSET  # comma-separated statuses
    agent_id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)] | UnsetType = UNSET
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=NO_NUL)] | UnsetType = UNSET
    created_after: str | UnsetType = UNSET  # RFC 3339; read strictly by rfc3339() (lax reads "0.5" as a time)
    created_before: str | UnsetType = UNSET
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    cursor: str | UnsetType = UNSET


@routes.route(
    "POST",
    "/api/v1/agents/{agent_id}/commands",
    "admin",
    summary="Create a command for an agent",
    status=201,
    reply=CommandView,
    body=CreateCommand,
    params=(identifier("agent_id"),),
    errors=(404, 409),
)
async def create_command(request: web.Request, caller: Caller) -> web.Response:
    agent_id = path_identifier(request, "agent_id", "agent_not_found")
    body = await read_body(request, CreateCommand)
    if body.action in RESERVED_ACTIONS:  # OPEN_TUNNEL: the agent would dial the payload's URL with its own token
        raise ApiError(400, "invalid_field", f"{body.action} is asked only by the gateway itself", "action")
    expires_at = expiry(body, request.app[COMMAND_EXPIRY_KEY])
    try:
        row = await pool_of(request).fetchrow(
            QUERIES["create_command"],
            agent_id,
            body.command_id,
            body.action,
            body.payload,
            body.session_id,
            body.max_attempts,
            body.timeout_seconds,
            *audit.who(request, caller),  # its audit row is written by the same statement
            expires_at,
        )
    except asyncpg.UniqueViolationError as exc:
        raise ApiError(409, "duplicate_command", f"command {body.command_id!r} already exists", "command_id") from exc
    if row is None:
        raise await no_agent(request, agent_id, "agent_id")
    return encoded(view(row, CommandView), status=201)


async def no_agent(request: web.Request, agent_id: str, field: str) -> ApiError:
    """Why a create found no agent: it was deleted (409) or never registered (404)."""
    if await pool_of(request).fetchval(QUERIES["agent_deleted_at"], agent_id) is not None:
        return ApiError(409, "agent_deleted", f"agent {agent_id!r} was deleted (drained)", field)
    return ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", field)


def expiry(body: CreateCommand, default_seconds: int) -> datetime | None:
    """When the command expires if still pending: the earlier of those asked for (seconds from now, a
    time), else COMMAND_EXPIRY from now (0: never)."""
    now = datetime.now(UTC)
    asked = []
    if body.expires_in_seconds is not None:
        asked.append(now + timedelta(seconds=body.expires_in_seconds))
    if body.expires_at is not None:
        try:
            asked.append(msgspec.convert(body.expires_at, datetime))
        except msgspec.ValidationError as exc:  # 29 February of a common year
            raise ApiError(400, "invalid_field", f"expires_at is not a date: {exc}", "expires_at") from exc
    return min(asked) if asked else default_expiry(default_seconds, now)


def default_expiry(seconds: int, now: datetime | None = None) -> datetime | None:
    """COMMAND_EXPIRY from now; None when it is 0 (never)."""
    return (now or datetime.now(UTC)) + timedelta(seconds=seconds) if seconds > 0 else None


@routes.route(
    "GET",
    "/api/v1/commands/{command_id}",
    "admin",
    summary="A command and its progress",
    status=200,
    reply=CommandDetail,
    params=(identifier("command_id"),),
    errors=(404,),
)
async def get_command(request: web.Request, _: Caller) -> web.Response:
    command_id = path_identifier(request, "command_id", "command_not_found")
    pool = pool_of(request)
    row = await pool.fetchrow(QUERIES["get_command"], command_id)
    if row is None:
        raise not_found(command_id)
    attempts = [view(attempt, AttemptView) for attempt in await pool.fetch(QUERIES["attempt_history"], command_id)]
    return encoded(msgspec.structs.replace(view(row, CommandDetail), attempt_history=attempts))


def not_found(command_id: str) -> ApiError:
    return ApiError(404, "command_not_found", f"no command {command_id!r}", "command_id")


@routes.route(
    "POST",
    "/api/v1/commands/{command_id}/cancel",
    "admin",
    summary="Cancel a command that is pending or in flight",
    description="It is never delivered again. One sent or acknowledged to an agent that runs CANCEL_COMMAND "
    "gets a CANCEL_COMMAND (`cancel_command_id`) that stops its handler on the agent where the driver can; "
    "an agent of an earlier release runs it to completion, and its result is discarded.",
    status=200,
    reply=CancelledCommand,
    body=CancelCommand,
    params=(identifier("command_id"),),
    errors=(404, 409),
)
async def cancel_command(request: web.Request, caller: Caller) -> web.Response:
    command_id = path_identifier(request, "command_id", "command_not_found")
    body = await read_body(request, CancelCommand)
    pool = pool_of(request)
    async with pool.acquire() as conn, conn.transaction():
        cancelled = await CommandLifecycle(conn).cancel(command_id, body.reason)
        if cancelled is not None:
            detail = {"reason": body.reason, "was": cancelled["was"], "cancel_command_id": cancelled["cancel_id"]}
            await audit.record(conn, request, caller, "command.cancel", command_id, detail)
    if cancelled is None:
        status = await pool.fetchval(QUERIES["command_status"], command_id)
        if status is None:
            raise not_found(command_id)
        raise ApiError(409, "command_finished", f"command {command_id!r} is already {status}", "command_id")
    row = await pool.fetchrow(QUERIES["get_command"], command_id)
    return encoded(msgspec.structs.replace(view(row, CancelledCommand), cancel_command_id=cancelled["cancel_id"]))


@routes.route(
    "GET",
    "/api/v1/commands",
    "admin",
    summary="Commands, newest first, filtered and a page at a time",
    status=200,
    reply=CommandPage,
    params=(
        Param("status", "query", {"type": "string", "pattern": STATUS_LIST}, "one or more, comma-separated"),
        Param("agent_id", "query", {"type": "string", "pattern": ID_PATTERN}),
        Param("session_id", "query", {"type": "string", "minLength": 1, "maxLength": 255, "pattern": NO_NUL}),
        Param("created_after", "query", {"type": "string", "format": "date-time"}, "inclusive"),
        Param("created_before", "query", {"type": "string", "format": "date-time"}, "exclusive"),
        *PAGE_PARAMS,
    ),
)
async def list_commands(request: web.Request, _: Caller) -> web.Response:
    query = read_query(request, CommandFilter)
    statuses = None if query.status is UNSET else parse_statuses(query.status)
    after_created, after_id = (None, None) if query.cursor is UNSET else read_cursor(query.cursor)
    rows = await pool_of(request).fetch(
        QUERIES["list_commands"],
        statuses,
        unset_as_none(query.agent_id),
        unset_as_none(query.session_id),
        rfc3339(query.created_after, "created_after"),
        rfc3339(query.created_before, "created_before"),
        after_created,
        after_id,
        query.limit,
    )
    commands = [view(row, CommandView) for row in rows]
    last = rows[-1] if len(rows) == query.limit else None
    next_cursor = None if last is None else write_cursor(last["created_at"], last["id"])
    return encoded(CommandPage(commands=commands, next_cursor=next_cursor))


def parse_statuses(text: str) -> list[str]:
    statuses = text.split(",")
    known = get_args(CommandStatus)
    unknown = [status for status in statuses if status not in known]
    if unknown:
        raise ApiError(400, "invalid_field", f"unknown status {unknown[0]!r}; one of {', '.join(known)}", "status")
    return statuses
