"""Bulk command creation: up to MAX_BULK commands in one request and one transaction, each created,
audited and dispatched as a single create (commands.py) would; administrators only."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from streamspace_common.schemas import ID_PATTERN, Action

from .. import audit
from ..auth import Caller
from ..errors import ApiError, decode_body
from .base import NO_NUL, ApiRoutes, JsonObject, encoded, pool_of
from .commands import COMMAND_EXPIRY_KEY, QUERIES, RESERVED_ACTIONS, CreatedCommand, default_expiry, no_agent

BULK_BYTES_KEY = web.AppKey("max_bulk_request_bytes", int)  # MAX_BULK_REQUEST_BYTES
MAX_BULK = 1000  # commands in one bulk create
routes = ApiRoutes()


class BulkItem(msgspec.Struct, forbid_unknown_fields=True):
    """One command of a bulk create: the single create's fields that matter in bulk, validated alike."""

    agent_id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
    action: Action
    payload: JsonObject = {}
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=NO_NUL)] | None = None
    timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)] | None = None


class BulkCreate(msgspec.Struct, forbid_unknown_fields=True):
    commands: Annotated[list[BulkItem], msgspec.Meta(min_length=1, max_length=MAX_BULK)]


class BulkCreated(msgspec.Struct):
    commands: list[CreatedCommand]  # in the order of the request's items


@routes.route(
    "POST",
    "/api/v1/commands",
    "admin",
    summary="Create up to 1,000 commands at once",
    description="All in one transaction: every command is created or none is. An item that is invalid, or "
    "names an agent that is unknown (404) or deleted (409), refuses the whole request, its `field` naming the "
    "item, e.g. `commands[3].action`. The ids come back in the items' order. Each command is audited and "
    "dispatched as one created by `POST /api/v1/agents/{agent_id}/commands`, with COMMAND_EXPIRY as its expiry.",
    status=202,
    reply=BulkCreated,
    body=BulkCreate,
    errors=(404, 409),
)
async def create_commands(request: web.Request, caller: Caller) -> web.Response:
    body = decode_body(await read_bulk_body(request), BulkCreate)
    items = body.commands
    for index, item in enumerate(items):
        if item.action in RESERVED_ACTIONS:
            raise ApiError(
                400, "invalid_field", f"{item.action} is asked only by the gateway itself", item_field(index, "action")
            )
    encode = msgspec.json.encode
    row = await pool_of(request).fetchrow(
        QUERIES["create_commands"],
        [item.agent_id for item in items],
        [item.action for item in items],
        [encode(item.payload).decode() for item in items],
        [item.session_id for item in items],
        [item.timeout_seconds for item in items],
        default_expiry(request.app[COMMAND_EXPIRY_KEY]),
        *audit.who(request, caller),  # one audit row per command, by the same statement
    )
    if row["unknown_item"] is not None:
        index = row["unknown_item"] - 1
        raise await no_agent(request, items[index].agent_id, item_field(index, "agent_id"))
    return encoded(BulkCreated(commands=[CreatedCommand(command_id) for command_id in row["command_ids"]]), status=202)


def item_field(index: int, name: str) -> str:
    return f"commands[{index}].{name}"


async def read_bulk_body(request: web.Request) -> bytes:
    """The raw body, up to MAX_BULK_REQUEST_BYTES (the app's limit, MAX_REQUEST_BYTES, is for one command)."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json", "Content-Type")
    limit = request.app[BULK_BYTES_KEY]
    too_large = ApiError(413, "request_entity_too_large", f"the body is over {limit} bytes (MAX_BULK_REQUEST_BYTES)")
    if (request.content_length or 0) > limit:
        raise too_large
    raw = bytearray()
    async for chunk in request.content.iter_any():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    return bytes(raw)
