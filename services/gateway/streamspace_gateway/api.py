"""REST API of the gateway (§6): commands and agents."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from streamspace_common.schemas import AgentList, AgentView, CommandView, CreateCommand, ErrorResponse

from .errors import ApiError, decode_body
from .store import STORE_KEY, DuplicateCommand, Store, UnknownAgent

routes = web.RouteTableDef()


def store_of(request: web.Request) -> Store:
    return request.app[STORE_KEY]


def encoded(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status, content_type="application/json")


@routes.post("/api/v1/agents/{agent_id}/commands")
async def create_command(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json", "Content-Type")
    body = decode_body(await request.read(), CreateCommand)
    agent_id = request.match_info["agent_id"]
    try:
        command = await store_of(request).create_command(agent_id, body)
    except UnknownAgent as exc:
        raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id") from exc
    except DuplicateCommand as exc:
        raise ApiError(409, "duplicate_command", f"command {body.command_id!r} already exists", "command_id") from exc
    return encoded(command, status=201)


@routes.get("/api/v1/commands/{command_id}")
async def get_command(request: web.Request) -> web.Response:
    command_id = request.match_info["command_id"]
    command = await store_of(request).get_command(command_id)
    if command is None:
        raise ApiError(404, "command_not_found", f"no command {command_id!r}", "command_id")
    return encoded(command)


@routes.get("/api/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    return encoded(AgentList(agents=await store_of(request).list_agents()))


@routes.get("/api/v1/agents/{agent_id}")
async def get_agent(request: web.Request) -> web.Response:
    agent_id = request.match_info["agent_id"]
    agent = await store_of(request).get_agent(agent_id)
    if agent is None:
        raise ApiError(404, "agent_not_found", f"no agent {agent_id!r} is registered", "agent_id")
    return encoded(agent)


@routes.get("/api/v1/openapi.json")
async def openapi(_: web.Request) -> web.Response:
    return encoded(openapi_document())


def openapi_document() -> dict[str, Any]:
    types = [CreateCommand, CommandView, AgentView, AgentList, ErrorResponse]
    (create, command, agent, agents, error), components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )

    def reply(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    errors = {str(code): reply("error", error) for code in (400, 404)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "StreamSpace control plane", "version": "1"},
        "paths": {
            "/api/v1/agents/{agent_id}/commands": {
                "post": {
                    "summary": "Create a command for an agent",
                    "parameters": [{"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": create}}},
                    "responses": {
                        "201": reply("created", command),
                        **errors,
                        "409": reply("duplicate", error),
                        "413": reply("too large", error),
                    },
                }
            },
            "/api/v1/commands/{command_id}": {
                "get": {
                    "summary": "A command and its progress",
                    "parameters": [
                        {"name": "command_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": reply("the command", command), **errors},
                }
            },
            "/api/v1/agents": {"get": {"summary": "All agents", "responses": {"200": reply("agents", agents)}}},
            "/api/v1/agents/{agent_id}": {
                "get": {
                    "summary": "One agent",
                    "parameters": [{"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": reply("the agent", agent), **errors},
                }
            },
        },
        "components": {"schemas": components},
    }
