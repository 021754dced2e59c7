"""Agents (§6): their registry rows and their tokens. Administrators only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
import structlog
from aiohttp import web

from streamspace_common.commands import CommandLifecycle
from streamspace_common.db import load_queries
from streamspace_common.sessions import SessionLifecycle
from streamspace_common.tokens import hash_token, new_token

from .. import audit
from ..auth import Caller
from ..errors import ApiError, read_body
from ..registry import REGISTRY_KEY
from .base import (
    ApiRoutes,
    encoded,
    identifier,
    is_identifier,
    no_content,
    path_identifier,
    path_uuid,
    pool_of,
    uuid_param,
    view,
)

QUERIES = load_queries("streamspace_gateway.api", "agents.sql")
REGISTRY = load_queries("streamspace_common", "registry.sql")
log = structlog.get_logger("gateway.agents")
routes = ApiRoutes()


class AgentView(msgspec.Struct):
    agent_id: str
    status: Literal["online", "offline"]
    gateway_pod: str | None
    platform: str | None
    version: str | None
    capabilities: list[str]
    concurrency: int
    instance_id: str | None
    last_heartbeat: datetime | None
    connected_at: datetime | None
    deleted_at: datetime | None = None  # drained through DELETE: kept for history, never placed on again


class AgentDrained(msgspec.Struct):
    agent_id: str
    deleted_at: datetime
    commands_cancelled: list[str]  # its open commands, now cancelled
    sessions_lost: list[str]  # its sessions, now lost
    tokens_revoked: list[str]  # ids of the tokens revoked now (its sockets close within a heartbeat interval)


class InstanceView(msgspec.Struct):
    """A connected replica of an HA agent."""

    instance_id: str
    gateway_pod: str
    role: Literal["active", "standby"]
    connected_at: datetime


class AgentDetail(AgentView):
    epoch: int | None = None  # HA: the lease's epoch now (None: no replica ever held it)
    instances: list[InstanceView] = []  # HA: every connected replica (seen within 3 heartbeat intervals)


class AgentList(msgspec.Struct):
    agents: list[AgentView]


class AgentTokenView(msgspec.Struct):
    id: str
    agent_id: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None  # refused from then on (None: never)
    superseded_at: datetime | None = None  # a rotation replaced it: using it logs a warning until it expires


class AgentTokenCreated(msgspec.Struct):
    id: str
    agent_id: str
    created_at: datetime
    token: str  # shown this once; only its SHA-256 is stored
    expires_at: datetime | None = None


class RotateAgentToken(msgspec.Struct, forbid_unknown_fields=True):
    overlap_seconds: Annotated[int, msgspec.Meta(ge=0, le=30 * 86400)] = 3600  # the old tokens keep working
    expires_in_seconds: Annotated[int, msgspec.Meta(ge=1, le=10 * 365 * 86400)] | None = None  # the new one's life


class AgentTokenRotated(AgentTokenCreated):
    superseded: list[AgentTokenView] = []  # the old tokens, each with the end of its overlap


class AgentTokenList(msgspec.Struct):
    tokens: list[AgentTokenView]


@routes.route("GET", "/api/v1/agents", "admin", summary="All agents", status=200, reply=AgentList)
async def list_agents(request: web.Request, _: Caller) -> web.Response:
    rows = await pool_of(request).fetch(QUERIES["list_agents"])
    return encoded(AgentList(agents=[view(row, AgentView) for row in rows]))


@routes.route(
    "GET",
    "/api/v1/agents/{agent_id}",
    "admin",
    summary="One agent, with every connected replica of an HA agent",
    status=200,
    reply=AgentDetail,
    params=(identifier("agent_id"),),
    errors=(404,),
)
async def get_agent(request: web.Request, _: Caller) -> web.Response:
    agent_id = path_identifier(request, "agent_id", "agent_not_found")
    pool = pool_of(request)
    row = await pool.fetchrow(REGISTRY["get_agent"], agent_id)
    if row is None:
        raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id")
    epoch = await pool.fetchval(QUERIES["lease_epoch"], agent_id)
    seen_within = request.app[REGISTRY_KEY].mapping_ttl
    instances = [view(i, InstanceView) for i in await pool.fetch(QUERIES["agent_instances"], agent_id, seen_within)]
    return encoded(msgspec.structs.replace(view(row, AgentDetail), epoch=epoch, instances=instances))


@routes.route(
    "POST",
    "/api/v1/agents/{agent_id}/tokens",
    "admin",
    summary="Register the agent if new and a token for it (the token is in this answer only)",
    description="409 `agent_deleted` for an agent that was deleted (drained): its id is retired.",
    status=201,
    reply=AgentTokenCreated,
    params=(identifier("agent_id"),),
    errors=(409,),
)
async def create_agent_token(request: web.Request, caller: Caller) -> web.Response:
    agent_id = request.match_info["agent_id"]
    if not is_identifier(agent_id):
        raise ApiError(400, "invalid_field", "use letters, digits, '.', '_', ':' or '-' (255 at most)", "agent_id")
    token = new_token()
    async with pool_of(request).acquire() as conn, conn.transaction():
        if await conn.fetchval(REGISTRY["ensure_agent"], agent_id) is not None:
            raise deleted(agent_id)
        row = await conn.fetchrow(REGISTRY["register_agent_token"], agent_id, hash_token(token), None)
        await audit.record(conn, request, caller, "agent_token.create", row["id"], {"agent_id": agent_id})
    return encoded(AgentTokenCreated(token=token, **issued(row)), status=201)


@routes.route(
    "POST",
    "/api/v1/agents/{agent_id}/tokens/rotate",
    "admin",
    summary="A new token for the agent; its other live tokens keep working until the overlap ends",
    description="Using a superseded token logs a warning on the gateway; once expired it is refused at the "
    "handshake (401) and its open sockets are closed (4401) within a heartbeat interval.",
    status=201,
    reply=AgentTokenRotated,
    body=RotateAgentToken,
    params=(identifier("agent_id"),),
    errors=(404, 409),
)
async def rotate_agent_token(request: web.Request, caller: Caller) -> web.Response:
    agent_id = path_identifier(request, "agent_id", "agent_not_found")
    body = await read_body(request, RotateAgentToken)
    token = new_token()
    token_hash = hash_token(token)
    async with pool_of(request).acquire() as conn, conn.transaction():
        agent = await conn.fetchrow(REGISTRY["get_agent"], agent_id)
        if agent is None:
            raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id")
        if agent["deleted_at"] is not None:
            raise deleted(agent_id)
        row = await conn.fetchrow(REGISTRY["register_agent_token"], agent_id, token_hash, body.expires_in_seconds)
        old = await conn.fetch(REGISTRY["supersede_agent_tokens"], agent_id, body.overlap_seconds, token_hash)
        detail = {"agent_id": agent_id, "superseded": [r["id"] for r in old], "overlap_seconds": body.overlap_seconds}
        await audit.record(conn, request, caller, "agent_token.rotate", row["id"], detail)
    superseded = [view(r, AgentTokenView) for r in old]
    return encoded(AgentTokenRotated(token=token, superseded=superseded, **issued(row)), status=201)


@routes.route(
    "GET",
    "/api/v1/agents/{agent_id}/tokens",
    "admin",
    summary="An agent's tokens, revoked ones included (no secrets)",
    status=200,
    reply=AgentTokenList,
    params=(identifier("agent_id"),),
    errors=(404,),
)
async def list_agent_tokens(request: web.Request, _: Caller) -> web.Response:
    agent_id = path_identifier(request, "agent_id", "agent_not_found")
    pool = pool_of(request)
    if await pool.fetchrow(REGISTRY["get_agent"], agent_id) is None:
        raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id")
    rows = await pool.fetch(QUERIES["list_agent_tokens"], agent_id)
    return encoded(AgentTokenList(tokens=[view(row, AgentTokenView) for row in rows]))


@routes.route(
    "DELETE",
    "/api/v1/agents/{agent_id}/tokens/{token_id}",
    "admin",
    summary="Revoke an agent token: it can no longer open a connection",
    status=204,
    reply=None,
    params=(identifier("agent_id"), uuid_param("token_id", route_regex="(?!rotate$)[^/]+")),
    errors=(404,),
)
async def revoke_agent_token(request: web.Request, caller: Caller) -> web.Response:
    agent_id = path_identifier(request, "agent_id", "token_not_found")
    token_id = path_uuid(request, "token_id", "token_not_found")
    async with pool_of(request).acquire() as conn, conn.transaction():
        if await conn.fetchval(QUERIES["revoke_agent_token"], token_id, agent_id) is None:
            raise ApiError(404, "token_not_found", f"agent {agent_id!r} has no token {token_id!r}", "token_id")
        await audit.record(conn, request, caller, "agent_token.revoke", token_id, {"agent_id": agent_id})
    return no_content()


def issued(row: asyncpg.Record) -> dict[str, Any]:
    """A token registered now, as the API shows it (registry.sql's row also says whether this call made it)."""
    return {name: row[name] for name in ("id", "agent_id", "created_at", "expires_at")}


def deleted(agent_id: str) -> ApiError:
    return ApiError(409, "agent_deleted", f"agent {agent_id!r} was deleted (drained): use a new agent id", "agent_id")


@routes.route(
    "DELETE",
    "/api/v1/agents/{agent_id}",
    "admin",
    summary="Delete (drain) an agent: nothing is placed on it again, its open commands are cancelled, its "
    "sessions lost, its tokens revoked",
    description="In one transaction; idempotent (asking again cancels, loses and revokes whatever is left). "
    "The row stays for history with its `deleted_at`. Its sockets close within a heartbeat interval (4401), "
    "and a socket naming it later is refused (4404).",
    status=200,
    reply=AgentDrained,
    params=(identifier("agent_id"),),
    errors=(404,),
)
async def delete_agent(request: web.Request, caller: Caller) -> web.Response:
    agent_id = path_identifier(request, "agent_id", "agent_not_found")
    async with pool_of(request).acquire() as conn, conn.transaction():
        deleted_at = await conn.fetchval(QUERIES["mark_agent_deleted"], agent_id)
        if deleted_at is None:
            raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id")
        reason = f"agent {agent_id} was deleted (drained) by {caller.username}"
        cancelled = await CommandLifecycle(conn).cancel_for_agent(agent_id, reason)
        lost = await SessionLifecycle(pool_of(request)).lose_agent_sessions(conn, agent_id, reason)
        tokens = [row["id"] for row in await conn.fetch(QUERIES["revoke_agent_tokens"], agent_id)]
        detail = {"commands_cancelled": len(cancelled), "sessions_lost": len(lost), "tokens_revoked": tokens}
        await audit.record(conn, request, caller, "agent.delete", agent_id, detail)
    log.warning("agent_deleted", agent_id=agent_id, by=caller.username, **detail)
    drained = AgentDrained(agent_id, deleted_at, cancelled, lost, tokens)
    return encoded(drained)
