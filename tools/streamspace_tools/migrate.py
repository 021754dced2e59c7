"""streamspace-migrate: apply migrations/*.sql in order, once each.

Each file runs in its own transaction and is recorded in schema_migrations. A session-level
advisory lock makes two migrators started at once take turns, so running it twice, or from two
processes at the same time, is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import structlog

from streamspace_common.log import configure_logging
from streamspace_common.settings import load_settings

from .settings import ToolSettings

LOCK_KEY = 0x5354524D  # "STRM"
log = structlog.get_logger("migrate")


def migrations_dir() -> Path:
    configured = os.environ.get("MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "migrations"


def migration_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no migrations in {directory} (set MIGRATIONS_DIR)")
    return files


async def create_database_if_missing(dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    if not name:
        raise ValueError("DATABASE_URL names no database")
    conn = await asyncpg.connect(dsn, database="postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
                log.info("database_created", database=name)
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply what is missing; return the versions applied by this call."""
    files = migration_files(directory or migrations_dir())
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for path in files:
            version = path.stem
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("migration_applied", version=version)
            applied.append(version)
    finally:
        await conn.close()  # closing the session releases the advisory lock
    return applied


def dump_schema(dsn: str) -> str:
    """The migrated schema as pg_dump prints it, less the lines that change from one dump to the next."""
    dump = subprocess.run(  # noqa: S603 (no shell; pg_dump from PATH: an operator's tool, as psql is)
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", dsn],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    varying = ("\\restrict", "\\unrestrict", "-- Dumped from", "-- Dumped by")
    return "".join(line for line in dump.splitlines(keepends=True) if not line.startswith(varying))


def main() -> None:
    parser = argparse.ArgumentParser(prog="streamspace-migrate", description=__doc__)
    parser.add_argument("--create-database", action="store_true", help="create the database first if missing")
    parser.add_argument(
        "--dump-schema", action="store_true", help="after migrating, print the schema (docs/schema.sql is this output)"
    )
    args = parser.parse_args()
    settings = load_settings(ToolSettings)
    configure_logging(settings.log_format, settings.log_level, service="migrate")

    async def run() -> None:
        if args.create_database:
            await create_database_if_missing(settings.database_url)
        applied = await migrate(settings.database_url)
        log.info("migrations_up_to_date", applied=len(applied))
        if args.dump_schema:
            print(dump_schema(settings.database_url), end="")

    try:
        asyncio.run(run())
    except (OSError, ValueError, asyncpg.PostgresError, subprocess.CalledProcessError) as exc:
        log.error("migration_failed", error=str(exc))
        sys.exit(1)
