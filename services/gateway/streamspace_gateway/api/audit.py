"""The audit trail (docs/security.md "Audit trail"): who did what, from where. Administrators only.

Written by ``..audit.record`` from the handlers that change things; read here, newest first, a page at
a time with the same (time, id) cursor as GET /api/v1/commands.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import UNSET, UnsetType

from streamspace_common.db import load_queries

from ..auth import Caller
from .base import NO_NUL, ApiRoutes, Param, encoded, pool_of, read_query, view
from .paging import PAGE_PARAMS, read_cursor, rfc3339, unset_as_none, write_cursor

QUERIES = load_queries("streamspace_gateway.api", "audit.sql")
ACTION_PATTERN = r"^[a-z_]{1,32}(\.[a-z_]{1,32}|\.\*)?$(?!\n)"
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=NO_NUL)]
routes = ApiRoutes()


class AuditEntry(msgspec.Struct):
    id: str
    at: datetime
    actor_id: str | None  # the user (None: nobody signed in, e.g. a failed login)
    actor_name: str | None  # their username then; at a failed login, the name tried
    key_id: str | None  # the API key the request came with (None: a login token, or none)
    address: str | None  # the client address the gateway saw
    forwarded_for: str | None  # X-Forwarded-For as the client (or an ingress) sent it: unverified
    action: str
    target: str | None
    detail: dict[str, Any]
    replica: str  # the gateway replica that recorded it (its PostgreSQL application_name)


class AuditPage(msgspec.Struct):
    entries: list[AuditEntry]
    next_cursor: str | None  # pass as `cursor` for the next page; None: this was the last


class AuditFilter(msgspec.Struct, forbid_unknown_fields=True):
    actor: Text | UnsetType = UNSET  # a user id (UUID) or a username
    action: Annotated[str, msgspec.Meta(pattern=ACTION_PATTERN)] | UnsetType = UNSET
    target: Text | UnsetType = UNSET
    address: Text | UnsetType = UNSET
    since: str | UnsetType = UNSET  # RFC 3339; read strictly by rfc3339()
    until: str | UnsetType = UNSET
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    cursor: str | UnsetType = UNSET


TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": NO_NUL}


@routes.route(
    "GET",
    "/api/v1/audit",
    "admin",
    summary="The audit trail, newest first, filtered and a page at a time",
    description='Who did what, from where (docs/security.md "Audit trail" lists the actions).',
    status=200,
    reply=AuditPage,
    params=(
        Param("actor", "query", TEXT_SCHEMA, "a user id, or a username (at failed logins: the name tried)"),
        Param("action", "query", {"type": "string", "pattern": ACTION_PATTERN}, "e.g. session.create, or session.*"),
        Param("target", "query", TEXT_SCHEMA, "what was acted on: a user, key, session, command id, a template name"),
        Param("address", "query", TEXT_SCHEMA, "the client address"),
        Param("since", "query", {"type": "string", "format": "date-time"}, "inclusive"),
        Param("until", "query", {"type": "string", "format": "date-time"}, "exclusive"),
        *PAGE_PARAMS,
    ),
)
async def list_audit(request: web.Request, _: Caller) -> web.Response:
    query = read_query(request, AuditFilter)
    actor_id, actor_name = actor_filter(unset_as_none(query.actor))
    action = unset_as_none(query.action)
    prefix = action is not None and action.endswith(".*")
    after_at, after_id = (None, None) if query.cursor is UNSET else read_cursor(query.cursor)
    rows = await pool_of(request).fetch(
        QUERIES["list_audit"],
        actor_id,
        actor_name,
        action[:-1] if action is not None and prefix else action,
        prefix,
        unset_as_none(query.target),
        unset_as_none(query.address),
        rfc3339(query.since, "since"),
        rfc3339(query.until, "until"),
        after_at,
        after_id,
        query.limit,
    )
    last = rows[-1] if len(rows) == query.limit else None
    next_cursor = None if last is None else write_cursor(last["at"], last["id"])
    return encoded(AuditPage(entries=[view(row, AuditEntry) for row in rows], next_cursor=next_cursor))


def actor_filter(actor: str | None) -> tuple[str | None, str | None]:
    """A UUID names the user by id; anything else, by username."""
    if actor is None:
        return None, None
    try:
        return str(uuid.UUID(actor)), None
    except ValueError:
        return None, actor
