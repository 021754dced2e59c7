"""Sessions (§5): a user's running app or desktop, placed on an agent, driven by commands.

Every signed-in user creates, lists and drives their own sessions; another user's session is 404 for
them (its existence is not revealed); administrators see and drive everyone's. The lifecycle (states,
verbs, placement, quotas) lives in `streamspace_common.sessions`; this module is its HTTP face.
Verbs are idempotent: asking again for what is already asked (or done) answers 202 with the session
and adds no command; a verb the session's state does not allow (hibernating a stopped session) is 409.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import asyncpg
import msgspec
from aiohttp import web
from msgspec import UNSET, UnsetType

from streamspace_common.db import load_queries
from streamspace_common.schemas import Identifier
from streamspace_common.sessions import (
    STATES,
    VERBS,
    AlsoInTransaction,
    NoAgent,
    Placement,
    QuotaExceeded,
    SessionLifecycle,
    SessionStateName,
    Verb,
)

from .. import audit
from ..auth import Caller
from ..errors import ApiError, read_body
from .base import ApiRoutes, Param, encoded, path_uuid, pool_of, read_query, uuid_param
from .paging import PAGE_PARAMS, read_cursor, write_cursor
from .templates import Platform, TemplateName, create_payload, runnable_on

QUERIES = load_queries("streamspace_gateway.api", "sessions.sql")
QUOTA_KEY = web.AppKey("session_quota", int)
# seconds without a heartbeat after which an agent is not placed on (3 heartbeat intervals)
HEARTBEAT_WITHIN_KEY = web.AppKey("placement_heartbeat_within", float)
_STATE = "(" + "|".join(STATES) + ")"
STATE_LIST = f"^{_STATE}(,{_STATE})*$(?!\\n)"
SESSION_ID = (uuid_param("session_id"),)
SessionName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9 ._-]{0,62}[A-Za-z0-9._-])?$(?!\n)",
        description="1-64 characters: letters, digits, space, '.', '_', '-'; starts with a letter or digit, "
        "no trailing space",
    ),
]
routes = ApiRoutes()


class CreateSessionBody(msgspec.Struct, forbid_unknown_fields=True):
    template: TemplateName
    platform: Platform | None = None  # only agents of this platform
    agent_id: Identifier | None = None  # only this agent
    name: SessionName | None = None  # what the owner calls it (shown by the console and the viewer)


class Endpoint(msgspec.Struct):
    host: str
    port: int


class SessionView(msgspec.Struct):
    id: str
    name: str | None  # what the owner calls it (None: not named)
    user_id: str
    template: str
    agent_id: str
    platform: str
    state: SessionStateName
    desired_state: str  # what was last asked for: running, hibernated, stopped or deleted
    reason: str | None  # why, when failed
    endpoint: Endpoint | None  # where it is reached while running
    idle_timeout_seconds: int
    last_activity_at: datetime
    state_changed_at: datetime
    created_at: datetime
    updated_at: datetime


class SessionPage(msgspec.Struct):
    sessions: list[SessionView]
    next_cursor: str | None  # pass as `cursor` for the next page; None: this was the last


class SessionFilter(msgspec.Struct, forbid_unknown_fields=True):
    state: str | UnsetType = UNSET  # comma-separated states
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    cursor: str | UnsetType = UNSET


def session_view(row: asyncpg.Record) -> SessionView:
    endpoint = None
    if row["endpoint_host"] is not None and row["endpoint_port"] is not None:
        endpoint = Endpoint(host=row["endpoint_host"], port=row["endpoint_port"])
    return SessionView(
        id=str(row["id"]),
        name=row["name"],
        user_id=str(row["user_id"]),
        template=row["template"],
        agent_id=row["agent_id"],
        platform=row["platform"],
        state=row["state"],
        desired_state=row["desired_state"],
        reason=row["reason"],
        endpoint=endpoint,
        idle_timeout_seconds=row["idle_timeout_seconds"],
        last_activity_at=row["last_activity_at"],
        state_changed_at=row["state_changed_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def not_found(session_id: str) -> ApiError:
    return ApiError(404, "session_not_found", f"no session {session_id!r}", "session_id")


async def visible_session(request: web.Request, caller: Caller) -> asyncpg.Record:
    """The path's session if the caller may see it: its owner or an admin. Another user's is 404."""
    session_id = path_uuid(request, "session_id", "session_not_found")
    row: asyncpg.Record | None = await pool_of(request).fetchrow(QUERIES["get_session"], session_id)
    if row is None or (not caller.is_admin and str(row["user_id"]) != caller.user_id):
        raise not_found(session_id)
    return row


@routes.route(
    "POST",
    "/api/v1/sessions",
    "user",
    summary="Create a session from a template, on the least loaded agent that fits",
    description=(
        "Answers at once (202) with the session `pending`; it becomes `running` (with its endpoint) or "
        "`failed` (with the reason) when its agent reports. 409 `session_quota_exceeded` past SESSION_QUOTA, "
        "`no_agent_available` when no online agent fits, `no_capacity` when every agent that fits is full, "
        "`platform_not_allowed` when the template cannot run on the platform asked for."
    ),
    status=202,
    reply=SessionView,
    body=CreateSessionBody,
    errors=(404, 409),
)
async def create_session(request: web.Request, caller: Caller) -> web.Response:
    body = await read_body(request, CreateSessionBody)
    pool = pool_of(request)
    template = await pool.fetchrow(QUERIES["template_for_session"], body.template)
    if template is None:
        raise ApiError(404, "template_not_found", f"no template {body.template!r}", "template")
    platforms = runnable_on(template)
    if not platforms or (body.platform is not None and body.platform not in platforms):
        asked = body.platform or "any platform"
        raise ApiError(
            409,
            "platform_not_allowed",
            f"template {body.template!r} runs on {', '.join(platforms) or 'no platform'}, not {asked}",
            "platform" if body.platform else "template",
        )
    placement = Placement(
        template=body.template,
        platforms=platforms,
        idle_timeout_seconds=template["idle_timeout_seconds"],
        payload=create_payload(template),
        platform=body.platform,
        agent_id=body.agent_id,
        heartbeat_within=request.app[HEARTBEAT_WITHIN_KEY],
        name=body.name,
    )

    async def audited(conn: asyncpg.Connection, session: asyncpg.Record) -> None:
        detail = {"template": body.template, "agent_id": session["agent_id"], "platform": session["platform"]}
        if body.name is not None:
            detail["name"] = body.name
        await audit.record(conn, request, caller, "session.create", str(session["id"]), detail)

    try:
        row = await SessionLifecycle(pool).create(
            str(uuid.uuid4()), caller.user_id, request.app[QUOTA_KEY], placement, audited
        )
    except QuotaExceeded as exc:
        raise ApiError(409, "session_quota_exceeded", str(exc), "SESSION_QUOTA") from exc
    except NoAgent as exc:
        code = "no_capacity" if exc.full else "no_agent_available"
        raise ApiError(409, code, str(exc), "agent_id" if body.agent_id else "platform") from exc
    return encoded(session_view(row), status=202)


@routes.route(
    "GET",
    "/api/v1/sessions",
    "user",
    summary="Sessions, newest first: the caller's own (an administrator: everyone's)",
    status=200,
    reply=SessionPage,
    params=(
        Param("state", "query", {"type": "string", "pattern": STATE_LIST}, "one or more, comma-separated"),
        *PAGE_PARAMS,
    ),
)
async def list_sessions(request: web.Request, caller: Caller) -> web.Response:
    query = read_query(request, SessionFilter)
    states = None if query.state is UNSET else parse_states(query.state)
    after_created, after_id = (None, None) if query.cursor is UNSET else read_cursor(query.cursor)
    owner = None if caller.is_admin else caller.user_id
    rows = await pool_of(request).fetch(QUERIES["list_sessions"], owner, states, after_created, after_id, query.limit)
    last = rows[-1] if len(rows) == query.limit else None
    next_cursor = None if last is None else write_cursor(last["created_at"], str(last["id"]))
    return encoded(SessionPage(sessions=[session_view(row) for row in rows], next_cursor=next_cursor))


def parse_states(text: str) -> list[str]:
    states = text.split(",")
    unknown = [state for state in states if state not in STATES]
    if unknown:
        raise ApiError(400, "invalid_field", f"unknown state {unknown[0]!r}; one of {', '.join(STATES)}", "state")
    return states


@routes.route(
    "GET",
    "/api/v1/sessions/{session_id}",
    "user",
    summary="One session (the caller's own; an administrator: anyone's)",
    status=200,
    reply=SessionView,
    params=SESSION_ID,
    errors=(404,),
)
async def get_session(request: web.Request, caller: Caller) -> web.Response:
    return encoded(session_view(await visible_session(request, caller)))


def audited_verb(request: web.Request, caller: Caller, verb: Verb) -> AlsoInTransaction:
    async def audited(conn: asyncpg.Connection, session: asyncpg.Record) -> None:
        detail = {"command_id": session["command_id"], "owner": str(session["user_id"])}
        await audit.record(conn, request, caller, f"session.{verb}", str(session["id"]), detail)

    return audited


async def ask(request: web.Request, caller: Caller, verb: Verb) -> web.Response:
    row = await visible_session(request, caller)
    session_id = str(row["id"])
    lifecycle = SessionLifecycle(pool_of(request))
    try:
        moved = await lifecycle.request(session_id, verb, request.app[QUOTA_KEY], audited_verb(request, caller, verb))
    except QuotaExceeded as exc:
        raise ApiError(409, "session_quota_exceeded", str(exc), "SESSION_QUOTA") from exc
    except NoAgent as exc:  # waking: its agent is at its max_sessions
        raise ApiError(409, "no_capacity", str(exc), "session_id") from exc
    if moved is not None:
        return encoded(session_view(moved), status=202)
    now = await pool_of(request).fetchrow(QUERIES["get_session"], session_id)
    if now is None:
        raise not_found(session_id)
    if now["desired_state"] == VERBS[verb].desired:  # asked for already: nothing more to do
        return encoded(session_view(now), status=202)
    raise ApiError(
        409,
        "session_state",
        f"cannot {verb} a session that is {now['state']} (asked to be {now['desired_state']})",
        "session_id",
    )


def verb_route(verb: Verb, summary: str) -> None:
    async def handler(request: web.Request, caller: Caller) -> web.Response:
        return await ask(request, caller, verb)

    routes.route(
        "POST",
        f"/api/v1/sessions/{{session_id}}/{verb}",
        "user",
        summary=summary,
        description="Idempotent: asking again while it is asked for (or done) answers 202 and adds nothing.",
        status=202,
        reply=SessionView,
        params=SESSION_ID,
        errors=(404, 409),
    )(handler)


verb_route("stop", "Stop the session (its storage stays; wake starts it again)")
verb_route("hibernate", "Hibernate a running session (wake resumes it)")
verb_route(
    "wake",
    "Wake a hibernated or stopped session (or retry a failed one); a stopped or failed one must fit the "
    "owner's quota (409 session_quota_exceeded) and its agent's max_sessions (409 no_capacity) again",
)


@routes.route(
    "DELETE",
    "/api/v1/sessions/{session_id}",
    "user",
    summary="Delete the session: its workload and storage are removed",
    description="Gone from the API at once (404 afterwards); the agent removes the workload.",
    status=204,
    reply=None,
    params=SESSION_ID,
    errors=(404,),
)
async def delete_session(request: web.Request, caller: Caller) -> web.Response:
    row = await visible_session(request, caller)
    audited = audited_verb(request, caller, "delete")
    moved = await SessionLifecycle(pool_of(request)).request(str(row["id"]), "delete", request.app[QUOTA_KEY], audited)
    if moved is None:
        raise not_found(str(row["id"]))
    return web.Response(status=204)


@routes.route(
    "POST",
    "/api/v1/sessions/{session_id}/activity",
    "user",
    summary="Mark the session as used now (its idle clock starts again)",
    status=200,
    reply=SessionView,
    params=SESSION_ID,
    errors=(404,),
)
async def touch_session(request: web.Request, caller: Caller) -> web.Response:
    row = await visible_session(request, caller)
    touched = await SessionLifecycle(pool_of(request)).touch(str(row["id"]))
    if touched is None:
        raise not_found(str(row["id"]))
    return encoded(session_view(touched))
