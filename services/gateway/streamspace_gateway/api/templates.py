"""Templates (§5): what a session runs. Administrators create, replace and delete them; every
signed-in user lists them and reads one.

A template names what each platform needs: `image` (docker, kubernetes) and `command` (local: an argv
in which `{port}` and `{python}` are substituted), the ports (the first is where the session is
reached), resources, environment, the platforms it may run on (empty: any that can run it: local
needs a command, docker and kubernetes an image) and the idle timeout after which a running session
is hibernated (0: never).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import asyncpg
import msgspec
from aiohttp import web

from streamspace_common.actions import EnvName, Port
from streamspace_common.db import load_queries

from .. import audit
from ..auth import Caller
from ..errors import ApiError, read_body
from .base import NO_NUL, ApiRoutes, Param, encoded, no_content, pool_of, view

QUERIES = load_queries("streamspace_gateway.api", "templates.sql")
REGISTRY = load_queries("streamspace_common", "registry.sql")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$(?!\n)"
Platform = Literal["local", "docker", "kubernetes"]
TemplateName = Annotated[
    str, msgspec.Meta(pattern=NAME_PATTERN, description="lower-case letters, digits, '.', '_', '-'")
]
# Limits keep every body the schema allows (and one item more) under MAX_REQUEST_BYTES (64 KiB): a body
# the document calls valid, or invalid by one item too many, is answered 2xx/400, never 413.
Text = Annotated[str, msgspec.Meta(max_length=1000, pattern=NO_NUL)]
Argument = Annotated[str, msgspec.Meta(max_length=256, pattern=NO_NUL)]
EnvValue = Annotated[str, msgspec.Meta(max_length=256, pattern=NO_NUL)]
routes = ApiRoutes()


class TemplateSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything but the name (PUT /templates/{name} replaces it whole)."""

    description: Text = ""
    image: Annotated[str, msgspec.Meta(max_length=500, pattern=NO_NUL)] = ""
    command: Annotated[list[Argument], msgspec.Meta(max_length=24, description="local: argv")] = []
    ports: Annotated[list[Port], msgspec.Meta(max_length=16)] = []
    cpu: Annotated[float, msgspec.Meta(gt=0, le=64, description="CPU cores")] = 0.5
    memory: Annotated[int, msgspec.Meta(ge=16, le=1024 * 1024, description="MiB")] = 256
    env: Annotated[dict[EnvName, EnvValue], msgspec.Meta(max_length=16)] = {}
    platforms: Annotated[list[Platform], msgspec.Meta(max_length=3, description="empty: any")] = []
    idle_timeout_seconds: Annotated[int, msgspec.Meta(ge=0, le=30 * 24 * 3600, description="0: never")] = 0


class CreateTemplate(TemplateSpec, forbid_unknown_fields=True, kw_only=True):
    name: TemplateName


class TemplateView(msgspec.Struct):
    id: str
    name: str
    description: str
    image: str
    command: list[str]
    ports: list[int]
    cpu: float
    memory: int
    env: dict[str, str]
    platforms: list[str]
    idle_timeout_seconds: int
    created_at: datetime
    updated_at: datetime


class TemplateList(msgspec.Struct):
    templates: list[TemplateView]


NAME = (Param("name", "path", {"type": "string", "pattern": NAME_PATTERN}),)


def path_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not _valid_name(name):
        raise not_found(name)
    return name


def _valid_name(name: str) -> bool:
    try:
        msgspec.convert(name, TemplateName)
    except msgspec.ValidationError:
        return False
    return True


def not_found(name: str) -> ApiError:
    return ApiError(404, "template_not_found", f"no template {name!r}", "name")


def spec_values(spec: TemplateSpec) -> tuple[object, ...]:
    return (
        spec.description,
        spec.image,
        spec.command,
        spec.ports,
        spec.cpu,
        spec.memory,
        spec.env,
        spec.platforms,
        spec.idle_timeout_seconds,
    )


def spec_detail(spec: TemplateSpec) -> dict[str, object]:
    """What the audit trail keeps of a template: what it runs, not its environment (it may hold secrets)."""
    return {"image": spec.image, "command": spec.command, "platforms": spec.platforms, "env": sorted(spec.env)}


def runnable_on(template: asyncpg.Record) -> list[str]:
    """The platforms the template can run on: those it allows that it has what they need for."""
    can = [p for p in get_args(Platform) if (template["command"] if p == "local" else template["image"])]
    allowed = template["platforms"] or can
    return [p for p in allowed if p in can]


def create_payload(template: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": template["name"],
        "image": template["image"],
        "command": template["command"],
        "ports": template["ports"],
        "resources": {"cpu": template["cpu"], "memory": template["memory"]},
        "env": template["env"],
    }


@routes.route(
    "POST",
    "/api/v1/templates",
    "admin",
    summary="Create a template",
    status=201,
    reply=TemplateView,
    body=CreateTemplate,
    errors=(409,),
)
async def create_template(request: web.Request, caller: Caller) -> web.Response:
    body = await read_body(request, CreateTemplate)
    async with pool_of(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(REGISTRY["create_template"], body.name, *spec_values(body))
        if row is None:
            raise ApiError(409, "template_exists", f"template {body.name!r} already exists", "name")
        await audit.record(conn, request, caller, "template.create", body.name, spec_detail(body))
    return encoded(view(row, TemplateView), status=201)


@routes.route("GET", "/api/v1/templates", "user", summary="Every template", status=200, reply=TemplateList)
async def list_templates(request: web.Request, _: Caller) -> web.Response:
    rows = await pool_of(request).fetch(QUERIES["list_templates"])
    return encoded(TemplateList(templates=[view(row, TemplateView) for row in rows]))


@routes.route(
    "GET",
    "/api/v1/templates/{name}",
    "user",
    summary="One template",
    status=200,
    reply=TemplateView,
    params=NAME,
    errors=(404,),
)
async def get_template(request: web.Request, _: Caller) -> web.Response:
    name = path_name(request)
    row = await pool_of(request).fetchrow(QUERIES["get_template"], name)
    if row is None:
        raise not_found(name)
    return encoded(view(row, TemplateView))


@routes.route(
    "PUT",
    "/api/v1/templates/{name}",
    "admin",
    summary="Replace a template (sessions already made keep what they were made with)",
    status=200,
    reply=TemplateView,
    body=TemplateSpec,
    params=NAME,
    errors=(404,),
)
async def replace_template(request: web.Request, caller: Caller) -> web.Response:
    name = path_name(request)
    body = await read_body(request, TemplateSpec)
    async with pool_of(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(QUERIES["replace_template"], name, *spec_values(body))
        if row is None:
            raise not_found(name)
        await audit.record(conn, request, caller, "template.update", name, spec_detail(body))
    return encoded(view(row, TemplateView))


@routes.route(
    "DELETE",
    "/api/v1/templates/{name}",
    "admin",
    summary="Delete a template (its sessions keep running)",
    status=204,
    reply=None,
    params=NAME,
    errors=(404,),
)
async def delete_template(request: web.Request, caller: Caller) -> web.Response:
    name = path_name(request)
    async with pool_of(request).acquire() as conn, conn.transaction():
        if await conn.fetchval(QUERIES["delete_template"], name) is None:
            raise not_found(name)
        await audit.record(conn, request, caller, "template.delete", name)
    return no_content()
