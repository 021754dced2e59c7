"""The gateway's REST API (§6): one module per resource, each with its routes, bodies and queries.

Every operation is registered through ``base.ApiRoutes``, which records who may call it; the routes
and the OpenAPI document (/api/v1/openapi.json) are both built from those records, so they cannot
disagree.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ..errors import ErrorResponse
from . import agents, audit, bulk_commands, commands, keys, login, sessions, streams, templates, users
from .base import JSON_VALUE_SCHEMA, ApiRoutes, Operation, encoded

MODULES = (login, users, keys, agents, commands, bulk_commands, templates, sessions, streams, audit)
meta = ApiRoutes()
STATUS_TEXT = {
    400: "bad input; `field` names it",
    401: "missing, invalid, expired or revoked credentials",
    403: "the caller may not do this",
    404: "not found",
    405: "method not allowed",
    409: "conflict with stored state",
    413: "body too large",
    415: "body is not application/json",
    429: "too many attempts; wait the seconds of the Retry-After header",
    500: "internal error",
    503: "PostgreSQL unreachable; retry",
}
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "A login token (sst_..., POST /api/v1/auth/login) or an API key (ssk_..., POST /api/v1/keys).",
}


def operations() -> list[Operation]:
    return [operation for module in MODULES for operation in module.routes] + list(meta)


def add_api_routes(app: web.Application) -> None:
    for operation in operations():
        app.router.add_route(operation.method, operation.router_path(), operation.handler)


@meta.public("GET", "/api/v1/openapi.json", summary="This document", status=200, reply=None)
async def openapi(_: web.Request) -> web.Response:
    return encoded(openapi_document())


def _reply(description: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(op: Operation, schemas: dict[type, dict[str, Any]]) -> dict[str, Any]:
    error = schemas[ErrorResponse]
    who = {"public": "Anyone.", "user": "Any signed-in user.", "admin": "Administrators only."}[op.access]
    spec: dict[str, Any] = {
        "summary": op.summary,
        "description": f"{who} {op.description}".strip(),
        "operationId": _name(op),
        "security": [] if op.access == "public" else [{"bearer": []}],
        "x-streamspace-access": op.access,
        "responses": {
            str(op.status): _reply("success", None if op.reply is None else schemas[op.reply]),
            **{str(code): _reply(STATUS_TEXT[code], error) for code in op.statuses()},
        },
    }
    if op.params:
        spec["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.where == "path", "schema": p.schema}
            | ({"description": p.description} if p.description else {})
            for p in op.params
        ]
    if op.body is not None:
        spec["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas[op.body]}}}
    return spec


def _name(op: Operation) -> str:
    return f"{op.method.lower()}_{op.path.removeprefix('/api/v1/').replace('/', '_').replace('{', '').replace('}', '')}"


def openapi_document() -> dict[str, Any]:
    ops = operations()
    types = list(dict.fromkeys([ErrorResponse, *(t for op in ops for t in (op.body, op.reply) if t is not None)]))
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    schemas = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "StreamSpace control plane", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {**components, "JsonValue": JSON_VALUE_SCHEMA},
            "securitySchemes": {"bearer": SECURITY_SCHEME},
        },
    }
