"""PostgreSQL access: connection set-up and named SQL queries loaded from .sql files.

A queries file holds blocks introduced by a `-- name: <query_name>` line; the SQL of a block
runs to the next such line. Each service keeps its own queries.sql next to the code that runs it.
"""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from typing import Any

import asyncpg
import msgspec
import structlog

from .resilience import Backoff, Outage

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    text = resources.files(package).joinpath(filename).read_text()
    parts = _NAME_LINE.split(text)
    queries = {name: sql.strip() for name, sql in zip(parts[1::2], parts[2::2], strict=True)}
    if not queries:
        raise ValueError(f"no named queries in {package}/{filename}")
    return queries


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog")


CONNECT_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool, waiting (with backoff, logged once) for PostgreSQL if it is not up yet."""
    outage = Outage("postgres", structlog.get_logger("db"))
    backoff = Backoff(cap=5.0)
    while True:
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=init_connection)
            outage.recovered()
            return pool
        except CONNECT_ERRORS as exc:
            outage.failed(exc)
            await asyncio.sleep(backoff.next_delay())


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn
