"""Commands (§6): create one for an agent, read one back. Administrators only: the low-level API
under the sessions a user will drive."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from aiohttp import web

from streamspace_common.db import load_queries
from streamspace_common.schemas import ID_PATTERN, Action, CommandStatus

from ..auth import Caller
from ..errors import ApiError, read_body
from .base import NO_NUL, ApiRoutes, JsonObject, encoded, identifier, path_identifier, pool_of, view

QUERIES = load_queries("streamspace_gateway.api", "commands.sql")
routes = ApiRoutes()


class CreateCommand(msgspec.Struct, forbid_unknown_fields=True):
    action: Action
    payload: JsonObject = {}
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=NO_NUL)] | None = None
    command_id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)] | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    # seconds from the agent's ack to its result before a retry; None: the dispatchers' COMMAND_TIMEOUT
    timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)] | None = None


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
    next_attempt_at: datetime | None
    dispatched_by: str | None
    delivered_via_pod: str | None
    created_at: datetime
    sent_at: datetime | None
    acknowledged_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


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
async def create_command(request: web.Request, _: Caller) -> web.Response:
    agent_id = path_identifier(request, "agent_id", "agent_not_found")
    body = await read_body(request, CreateCommand)
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
        )
    except asyncpg.UniqueViolationError as exc:
        raise ApiError(409, "duplicate_command", f"command {body.command_id!r} already exists", "command_id") from exc
    if row is None:
        raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id")
    return encoded(view(row, CommandView), status=201)


@routes.route(
    "GET",
    "/api/v1/commands/{command_id}",
    "admin",
    summary="A command and its progress",
    status=200,
    reply=CommandView,
    params=(identifier("command_id"),),
    errors=(404,),
)
async def get_command(request: web.Request, _: Caller) -> web.Response:
    command_id = path_identifier(request, "command_id", "command_not_found")
    row = await pool_of(request).fetchrow(QUERIES["get_command"], command_id)
    if row is None:
        raise ApiError(404, "command_not_found", f"no command {command_id!r}", "command_id")
    return encoded(view(row, CommandView))
