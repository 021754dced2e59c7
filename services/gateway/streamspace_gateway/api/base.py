"""What every REST resource module uses: a route table that also records, per operation, who may call
it and what it answers (the OpenAPI document is built from these records), plus small helpers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
import msgspec
from aiohttp import web

from streamspace_common.schemas import ID_PATTERN

from ..auth import Caller, caller_of, require_admin
from ..errors import ApiError, field_of
from ..store import STORE_KEY

T = TypeVar("T")
Access = Literal["public", "user", "admin"]
Handler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]
PublicHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ID = re.compile(ID_PATTERN)
# Free text: anything but NUL, which PostgreSQL cannot store (decode_body refuses it, naming the field;
# the pattern says so in the OpenAPI document).
NO_NUL = "^[^\\u0000]*$"
# Any JSON value without a NUL in a key or string: what a free-form payload may hold.
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": ["null", "boolean", "number"]},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        },
    ]
}
JsonObject = Annotated[
    dict[str, Any],
    msgspec.Meta(
        extra_json_schema={
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        }
    ),
]


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query"]
    schema: dict[str, Any]
    description: str = ""
    route_regex: str = ""  # for aiohttp's router only, e.g. to leave /users/me to its own route


def identifier(name: str) -> Param:
    return Param(name, "path", {"type": "string", "pattern": ID_PATTERN})


def uuid_param(name: str, route_regex: str = "") -> Param:
    return Param(name, "path", {"type": "string", "format": "uuid"}, route_regex=route_regex)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: PublicHandler
    access: Access
    summary: str
    status: int  # the success status
    reply: type | None  # None: no body (204)
    body: type | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()  # statuses beyond those the access, body and params imply
    description: str = ""

    def router_path(self) -> str:
        path = self.path
        for param in self.params:
            if param.route_regex:
                path = path.replace(f"{{{param.name}}}", f"{{{param.name}:{param.route_regex}}}")
        return path

    def statuses(self) -> list[int]:
        codes = set(self.errors) | {500, 503}
        if self.access != "public":
            codes.add(401)
        if self.access == "admin":
            codes.add(403)
        if self.body is not None:
            codes |= {400, 413, 415}
        if self.params:
            codes.add(400)
        return sorted(codes)


@dataclass
class ApiRoutes:
    """The operations of one resource module, in registration order (aiohttp matches in that order)."""

    operations: list[Operation] = field(default_factory=list)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    def public(self, method: str, path: str, **spec: Any) -> Callable[[PublicHandler], PublicHandler]:
        def register(handler: PublicHandler) -> PublicHandler:
            self.operations.append(Operation(method, path, handler, "public", **spec))
            return handler

        return register

    def route(self, method: str, path: str, access: Access, **spec: Any) -> Callable[[Handler], Handler]:
        """Register handler(request, caller) for callers with this access ("user": any signed-in user)."""

        def register(handler: Handler) -> Handler:
            async def endpoint(request: web.Request) -> web.StreamResponse:
                caller = await caller_of(request)
                if access == "admin":
                    require_admin(caller)
                return await handler(request, caller)

            self.operations.append(Operation(method, path, endpoint, access, **spec))
            return handler

        return register


def pool_of(request: web.Request) -> asyncpg.Pool:
    return request.app[STORE_KEY].pool


def encoded(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status, content_type="application/json")


def no_content() -> web.Response:
    return web.Response(status=204)


def view(row: asyncpg.Record, view_type: type[T]) -> T:
    return msgspec.convert(dict(row), view_type)


def is_identifier(value: str) -> bool:
    return _ID.match(value) is not None


def path_identifier(request: web.Request, name: str, not_found: str) -> str:
    """A path id that no stored row could have (a NUL, a slash...) is simply not found."""
    value = request.match_info[name]
    if not is_identifier(value):
        raise ApiError(404, not_found, f"no {name.removesuffix('_id')} {value!r}", name)
    return value


def path_uuid(request: web.Request, name: str, not_found: str) -> str:
    value = request.match_info[name]
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ApiError(404, not_found, f"no {name.removesuffix('_id')} {value!r}", name) from exc


def query_uuid(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ApiError(400, "invalid_field", f"{name} must be a UUID", name) from exc


def query_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise ApiError(400, "invalid_field", f"{name} must be true or false", name)
    return value == "true"


def read_query(request: web.Request, query_type: type[T]) -> T:
    """Query parameters as a msgspec Struct (strings converted); a bad one is a 400 naming it."""
    try:
        return msgspec.convert(dict(request.query), query_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_field", f"invalid query: {exc}", field_of(exc)) from exc
