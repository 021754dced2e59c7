"""The operator's console scripts, run as real processes: streamspace-migrate and streamspace-admin (§6)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from streamspace_common.schemas import CONNECT_PATH
from streamspace_common.tokens import hash_token
from streamspace_testkit import BASE_DATABASE_URL, RunEnv, Stack, drop_database, wait_until, with_database
from streamspace_tools.migrate import LOCK_KEY, dump_schema

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = sorted((REPO / "migrations").glob("*.sql"))
VERSIONS = [path.stem for path in MIGRATIONS]
BIN = Path(sys.executable).parent
TABLES = ("agents", "agent_tokens", "agent_commands")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines (LOG_FORMAT=json) with this event name."""
        found = []
        for line in self.stdout.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
        return found

    def applied(self) -> list[str]:
        return [entry["version"] for entry in self.events("migration_applied")]


async def start(script: str, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / script),
        *args,
        env={**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "info", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> Run:
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


async def run(script: str, *args: str, env: dict[str, str]) -> Run:
    return await finish(await start(script, *args, env=env))


async def database_exists(name: str) -> bool:
    conn = await asyncpg.connect(BASE_DATABASE_URL)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


@pytest.fixture
async def fresh_database() -> AsyncIterator[tuple[str, str]]:
    """(name, url) of a database name nobody uses; dropped afterwards if anything created it."""
    name = f"streamspace_migrate_{uuid.uuid4().hex[:12]}"
    url = with_database(BASE_DATABASE_URL, name)
    yield name, url
    await drop_database(url)


@pytest.fixture
async def empty_database(fresh_database: tuple[str, str]) -> str:
    """The URL of a brand-new, empty database."""
    name, url = fresh_database
    conn = await asyncpg.connect(BASE_DATABASE_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url


async def recorded(url: str) -> list[tuple[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        return [(row["version"], row["applied_at"]) for row in rows]
    finally:
        await conn.close()


async def tables_present(url: str, *names: str) -> dict[str, bool]:
    conn = await asyncpg.connect(url)
    try:
        return {name: await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name) for name in names}
    finally:
        await conn.close()


# --- streamspace-migrate ------------------------------------------------------------------------


async def test_two_migrators_at_once_then_a_third_that_applies_nothing(empty_database: str) -> None:
    assert VERSIONS, "no migrations/*.sql found"
    env = {"DATABASE_URL": empty_database}
    first, second = await asyncio.gather(*(run("streamspace-migrate", env=env) for _ in range(2)))

    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    # Between them every version was applied exactly once.
    assert sorted(first.applied() + second.applied()) == VERSIONS
    versions = [version for version, _ in await recorded(empty_database)]
    assert versions == VERSIONS
    assert await tables_present(empty_database, *TABLES) == dict.fromkeys(TABLES, True)

    before = await recorded(empty_database)
    third = await run("streamspace-migrate", env=env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert third.applied() == []
    assert [entry["applied"] for entry in third.events("migrations_up_to_date")] == [0]
    assert await recorded(empty_database) == before


async def test_migrators_started_together_take_turns(empty_database: str) -> None:
    """Both processes are made to wait at the same starting line, then released together."""
    gate = await asyncpg.connect(empty_database)
    name = empty_database.rsplit("/", 1)[1]
    try:
        await gate.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        processes = [await start("streamspace-migrate", env={"DATABASE_URL": empty_database}) for _ in range(2)]

        async def both_waiting() -> bool:
            waiting = await gate.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = $1",
                name,
            )
            return bool(waiting == 2)

        try:
            await wait_until(both_waiting, timeout=30)
        finally:
            await gate.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        runs = [await finish(process) for process in processes]
    finally:
        await gate.close()

    assert [r.returncode for r in runs] == [0, 0], [r.stdout + r.stderr for r in runs]
    assert sorted(runs[0].applied() + runs[1].applied()) == VERSIONS
    assert [version for version, _ in await recorded(empty_database)] == VERSIONS


async def test_create_database_creates_a_missing_database(fresh_database: tuple[str, str]) -> None:
    name, url = fresh_database
    assert not await database_exists(name)

    without = await run("streamspace-migrate", env={"DATABASE_URL": url})
    assert without.returncode != 0
    assert without.events("migration_failed"), without.stdout + without.stderr
    assert not await database_exists(name)

    created = await run("streamspace-migrate", "--create-database", env={"DATABASE_URL": url})
    assert created.returncode == 0, created.stdout + created.stderr
    assert await database_exists(name)
    assert [version for version, _ in await recorded(url)] == VERSIONS
    assert await tables_present(url, *TABLES) == dict.fromkeys(TABLES, True)

    again = await run("streamspace-migrate", "--create-database", env={"DATABASE_URL": url})
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.applied() == []


async def test_a_failing_migration_exits_non_zero_and_records_nothing_for_it(
    empty_database: str, tmp_path: Path
) -> None:
    for path in MIGRATIONS:
        shutil.copy(path, tmp_path / path.name)
    bad = tmp_path / "9999_bad.sql"
    # The first statement works; the second fails, so the whole file must be rolled back.
    bad.write_text("CREATE TABLE half_done (id integer);\nSELECT no_such_column FROM agents;\n")
    env = {"DATABASE_URL": empty_database, "MIGRATIONS_DIR": str(tmp_path)}

    failed = await run("streamspace-migrate", env=env)
    assert failed.returncode != 0, failed.stdout
    assert failed.events("migration_failed"), failed.stdout + failed.stderr
    assert "no_such_column" in failed.stdout
    assert [version for version, _ in await recorded(empty_database)] == VERSIONS
    present = await tables_present(empty_database, "half_done", *TABLES)
    assert present == {"half_done": False, **dict.fromkeys(TABLES, True)}

    # Fixed, it goes in on the next run, alone.
    bad.write_text("CREATE TABLE half_done (id integer);\n")
    fixed = await run("streamspace-migrate", env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.applied() == ["9999_bad"]
    assert [version for version, _ in await recorded(empty_database)] == [*VERSIONS, "9999_bad"]


async def test_a_migrations_dir_without_migrations_is_an_error(empty_database: str, tmp_path: Path) -> None:
    result = await run("streamspace-migrate", env={"DATABASE_URL": empty_database, "MIGRATIONS_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "no migrations" in result.stdout, result.stdout + result.stderr


# --- streamspace-admin agent-token create -------------------------------------------------------


async def token_owners(db: asyncpg.Pool, token: str) -> list[str]:
    rows = await db.fetch("SELECT agent_id FROM agent_tokens WHERE token_hash = $1", hash_token(token))
    return [row["agent_id"] for row in rows]


async def test_admin_prints_a_new_token_that_authenticates(
    shared_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, test_env: RunEnv, agent_id: str
) -> None:
    result = await run(
        "streamspace-admin", "agent-token", "create", agent_id, env={"DATABASE_URL": test_env.database_url}
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.splitlines()[-1]
    assert token == token.strip() and len(token) >= 32
    assert token not in result.stderr  # the human-readable note goes to stderr, the secret to stdout only

    assert await token_owners(db, token) == [agent_id]
    assert await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id) == "offline"

    # And a gateway accepts it for that agent.
    url = shared_stack.services[0].url.replace("http://", "ws://", 1) + CONNECT_PATH
    async with http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send_json(
            {"type": "hello", "agent_id": agent_id, "platform": "local", "version": "t", "instance_id": "i"}
        )
        welcome = await ws.receive_json(timeout=10)
        assert welcome["type"] == "welcome"

    # A second call makes a second, different token.
    again = await run(
        "streamspace-admin", "agent-token", "create", agent_id, env={"DATABASE_URL": test_env.database_url}
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] != token
    assert await db.fetchval("SELECT count(*) FROM agent_tokens WHERE agent_id = $1", agent_id) == 2


async def test_admin_with_a_given_token_is_idempotent(db: asyncpg.Pool, test_env: RunEnv, agent_id: str) -> None:
    chosen = f"operator-chosen-{uuid.uuid4().hex}"
    env = {"DATABASE_URL": test_env.database_url}
    for _ in range(2):
        result = await run("streamspace-admin", "agent-token", "create", agent_id, "--token", chosen, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == chosen
    assert await token_owners(db, chosen) == [agent_id]
    assert await db.fetchval("SELECT count(*) FROM agent_tokens WHERE agent_id = $1", agent_id) == 1
    assert await db.fetchval("SELECT count(*) FROM agents WHERE agent_id = $1", agent_id) == 1


async def test_admin_refuses_another_agents_token(db: asyncpg.Pool, test_env: RunEnv, agent_id: str) -> None:
    chosen = f"operator-chosen-{uuid.uuid4().hex}"
    env = {"DATABASE_URL": test_env.database_url}
    first = await run("streamspace-admin", "agent-token", "create", agent_id, "--token", chosen, env=env)
    assert first.returncode == 0, first.stderr

    thief = f"{agent_id}-thief"
    refused = await run("streamspace-admin", "agent-token", "create", thief, "--token", chosen, env=env)
    assert refused.returncode != 0
    assert "another agent" in refused.stderr
    assert chosen not in refused.stdout
    assert await token_owners(db, chosen) == [agent_id]
    assert await db.fetchval("SELECT count(*) FROM agent_tokens WHERE agent_id = $1", thief) == 0
    assert await db.fetchval("SELECT count(*) FROM agents WHERE agent_id = $1", thief) == 0  # rolled back too


@pytest.mark.parametrize(
    "bad_id",
    ["has space", ".leading-dot", "", "x" * 256, "semi;colon", "slash/ed", "trailing-newline\n"],
    ids=["space", "leading_dot", "empty", "too_long", "semicolon", "slash", "trailing_newline"],
)
async def test_admin_refuses_an_invalid_agent_id(db: asyncpg.Pool, test_env: RunEnv, bad_id: str) -> None:
    result = await run(
        "streamspace-admin", "agent-token", "create", bad_id, env={"DATABASE_URL": test_env.database_url}
    )
    assert result.returncode != 0
    assert "invalid agent id" in result.stderr
    assert result.stdout == ""
    assert await db.fetchval("SELECT count(*) FROM agents WHERE agent_id = $1", bad_id) == 0


def test_the_schema_snapshot_is_current(test_env: RunEnv) -> None:
    """docs/schema.sql is what the migrations build; after adding one, run scripts/schema-snapshot."""
    snapshot = (Path(__file__).parents[2] / "docs" / "schema.sql").read_text()
    assert dump_schema(test_env.database_url) == snapshot, "docs/schema.sql is stale: run scripts/schema-snapshot"


# --- streamspace-admin user create --------------------------------------------------------------


async def login_status(gateway_url: str, username: str, password: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{gateway_url}/api/v1/auth/login", json={"username": username, "password": password}) as reply,
    ):
        body: dict[str, Any] = await reply.json()
        return reply.status, body


async def test_admin_creates_a_user_whose_printed_password_logs_in(
    shared_stack: Stack, db: asyncpg.Pool, test_env: RunEnv
) -> None:
    env = {"DATABASE_URL": test_env.database_url}
    name = f"first-admin-{uuid.uuid4().hex[:8]}"
    result = await run("streamspace-admin", "user", "create", name, "--admin", env=env)
    assert result.returncode == 0, result.stderr
    password = result.stdout.splitlines()[-1]
    assert len(password) >= 20 and password not in result.stderr

    row = await db.fetchrow("SELECT role, password_hash FROM users WHERE username = $1", name)
    assert (
        row["role"] == "admin" and password not in row["password_hash"] and row["password_hash"].startswith("$argon2")
    )
    status, body = await login_status(shared_stack.services[0].url, name, password)
    assert status == 200 and body["token"].startswith("sst_"), body

    # The same name again is refused, and the account is unchanged.
    again = await run("streamspace-admin", "user", "create", name, env=env)
    assert again.returncode != 0 and "already exists" in again.stderr and again.stdout == ""
    assert await db.fetchrow("SELECT role, password_hash FROM users WHERE username = $1", name) == row


async def test_admin_creates_a_user_with_a_given_password(
    shared_stack: Stack, db: asyncpg.Pool, test_env: RunEnv
) -> None:
    env = {"DATABASE_URL": test_env.database_url}
    name = f"carol-{uuid.uuid4().hex[:8]}"
    result = await run("streamspace-admin", "user", "create", name, "--password", "chosen-password-1", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "chosen-password-1"
    assert await db.fetchval("SELECT role FROM users WHERE username = $1", name) == "user"
    status, _ = await login_status(shared_stack.services[0].url, name, "chosen-password-1")
    assert status == 200
    status, _ = await login_status(shared_stack.services[0].url, name, "chosen-password-2")
    assert status == 401


@pytest.mark.parametrize(
    ("username", "extra", "message"),
    [
        ("has space", [], "invalid username"),
        ("", [], "invalid username"),
        ("dave", ["--password", "short"], "at least"),
    ],
    ids=["space", "empty", "short_password"],
)
async def test_admin_refuses_a_bad_user(
    db: asyncpg.Pool, test_env: RunEnv, username: str, extra: list[str], message: str
) -> None:
    before = await db.fetchval("SELECT count(*) FROM users")
    result = await run(
        "streamspace-admin", "user", "create", username, *extra, env={"DATABASE_URL": test_env.database_url}
    )
    assert result.returncode != 0 and message in result.stderr and result.stdout == ""
    assert await db.fetchval("SELECT count(*) FROM users") == before
