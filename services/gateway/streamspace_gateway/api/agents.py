"""Agents (§6): their registry rows and their tokens. Administrators only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from streamspace_common.db import load_queries
from streamspace_common.tokens import hash_token, new_token

from .. import audit
from ..auth import Caller
from ..errors import ApiError, read_body
from ..hub import HUB_KEY
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
    row = await pool.fetchrow(QUERIES["get_agent"], agent_id)
    if row is None:
        raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id")
    epoch = await pool.fetchval(QUERIES["lease_epoch"], agent_id)
    seen_within = request.app[HUB_KEY].mapping_ttl
    instances = [view(i, InstanceView) for i in await pool.fetch(QUERIES["agent_instances"], agent_id, seen_within)]
    return encoded(msgspec.structs.replace(view(row, AgentDetail), epoch=epoch, instances=instances))


@routes.route(
    "POST",
    "/api/v1/agents/{agent_id}/tokens",
    "admin",
    summary="Register the agent if new and a token for it (the token is in this answer only)",
    status=201,
    reply=AgentTokenCreated,
    params=(identifier("agent_id"),),
)
async def create_agent_token(request: web.Request, caller: Caller) -> web.Response:
    agent_id = request.match_info["agent_id"]
    if not is_identifier(agent_id):
        raise ApiError(400, "invalid_field", "use letters, digits, '.', '_', ':' or '-' (255 at most)", "agent_id")
    token = new_token()
    async with pool_of(request).acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["ensure_agent"], agent_id)
        row = await conn.fetchrow(QUERIES["create_agent_token"], agent_id, hash_token(token), None)
        await audit.record(conn, request, caller, "agent_token.create", row["id"], {"agent_id": agent_id})
    return encoded(AgentTokenCreated(token=token, **dict(row)), status=201)


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
    errors=(404,),
)
async def rotate_agent_token(request: web.Request, caller: Caller) -> web.Response:
    agent_id = path_identifier(request, "agent_id", "agent_not_found")
    body = await read_body(request, RotateAgentToken)
    token = new_token()
    token_hash = hash_token(token)
    async with pool_of(request).acquire() as conn, conn.transaction():
        if await conn.fetchrow(QUERIES["get_agent"], agent_id) is None:
            raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id")
        row = await conn.fetchrow(QUERIES["create_agent_token"], agent_id, token_hash, body.expires_in_seconds)
        old = await conn.fetch(QUERIES["supersede_agent_tokens"], agent_id, body.overlap_seconds, token_hash)
        detail = {"agent_id": agent_id, "superseded": [r["id"] for r in old], "overlap_seconds": body.overlap_seconds}
        await audit.record(conn, request, caller, "agent_token.rotate", row["id"], detail)
    superseded = [view(r, AgentTokenView) for r in old]
    return encoded(AgentTokenRotated(token=token, superseded=superseded, **dict(row)), status=201)


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
    if await pool.fetchrow(QUERIES["get_agent"], agent_id) is None:
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
