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

from .resilience import Outage, retry

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


# Errors that say "PostgreSQL is unavailable for now", not "this statement is wrong": the same
# statement may succeed later. Class 08 (connection), 57 (admin/crash shutdown, cannot connect now),
# 53 (too many connections, out of memory) and 40 (serialization failure, deadlock). Under a failover
# (Patroni: a multi-host DATABASE_URL with target_session_attrs=read-write) also: no host is the primary
# yet (asyncpg's TargetServerAttributeNotMatched), or a write reached a server just demoted (25006).
TRANSIENT_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,
    asyncpg.TargetServerAttributeNotMatched,
    asyncpg.ReadOnlySQLTransactionError,
)


def server_settings(service: str, pod: str) -> dict[str, str]:
    """Session settings of a service's connections.

    application_name shows in pg_stat_activity which process holds a connection. A generic plan is
    forced because every query is a prepared statement run again and again with values whose
    distribution does not change the best plan; custom plans re-planned the claim query on every
    call, which cost more than running it (0.6 ms of a 1.3 ms claim, bench/ and docs/).
    """
    return {"application_name": f"streamspace-{service}:{pod}"[:63], "plan_cache_mode": "force_generic_plan"}


async def keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to undo. By default asyncpg sends `SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` after every query run through the pool,
    and the caller waits for it: a second round trip per query (0.1 ms of a 1 ms REST create). Pooled
    connections here hold no session state (LISTEN and session advisory locks use connections of their
    own; no SET, no cursor outside a transaction); asyncpg still rolls back a transaction left open."""


async def create_pool(
    dsn: str, server_settings: dict[str, str] | None = None, min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    """A pool, waiting (with backoff, logged once) for PostgreSQL if it is not up yet."""

    async def attempt() -> asyncpg.Pool:
        return await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            reset=keep_session,
            server_settings=server_settings,
        )

    return await retry(attempt, Outage("postgres", structlog.get_logger("db")), TRANSIENT_ERRORS)
