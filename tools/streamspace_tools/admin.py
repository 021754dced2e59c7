"""streamspace-admin: operator tasks.

    streamspace-admin agent-token create AGENT_ID [--token VALUE | --token-file PATH] [--expires-in SECONDS]
    streamspace-admin agent-token rotate AGENT_ID [--overlap SECONDS] [--expires-in SECONDS]
    streamspace-admin secrets init DIR [--gateway POD_NAME ...]
    streamspace-admin user create USERNAME [--admin] [--password VALUE]
    streamspace-admin templates install-samples

`agent-token create` registers the agent if it is new and a token for it, and prints the token alone
on the last line of stdout. With --token an operator-chosen value is registered (idempotent), for
compose and Helm; --token-file reads that value from a file and does not print it; --expires-in gives
the token an end (refused at connect after it, and its open sockets closed). `agent-token rotate`
registers a new token for a registered agent, prints it alone on the last line, and gives the agent's
other live tokens an expiry at the end of the overlap (default DEFAULT_OVERLAP): until then they keep
working, and the gateway logs a warning whenever one is used. `secrets init` writes compose's generated
credentials into DIR (deploy_secrets.py). `user create` creates an account (the first administrator:
--admin) and prints its password alone on the last line of stdout: the one given, or a strong generated one.
`templates install-samples` installs the sample templates (SAMPLE_TEMPLATES) that are missing and
prints one line per template: installed, or kept (one of that name exists already).
Each change is written to the audit trail in its transaction (actor `streamspace-admin (<OS user>)`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from streamspace_common.db import init_connection, load_queries
from streamspace_common.deploy_secrets import Layout, init_secrets
from streamspace_common.passwords import MIN_LENGTH, hash_password, new_password
from streamspace_common.schemas import ID_PATTERN, USERNAME_PATTERN
from streamspace_common.settings import load_settings
from streamspace_common.tokens import hash_token, new_token

from .settings import ToolSettings

# The REST API's own statements (registry.sql): the command line and the API make the same rows.
REGISTRY = load_queries("streamspace_common", "registry.sql")
DEFAULT_OVERLAP = 3600  # seconds an agent's old token keeps working after a rotation


class AdminError(Exception):
    pass


async def audit(conn: asyncpg.Connection, action: str, target: str, detail: dict[str, Any]) -> None:
    """One audit row (docs/security.md "Audit trail"), on the connection of the change."""
    actor = f"streamspace-admin ({operator()})"
    await conn.execute(REGISTRY["record_audit"], None, actor, None, None, None, action, target, detail)


def operator() -> str:
    """The operating system's user running the command (a uid without a name in a container)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


class SampleTemplate(msgspec.Struct, kw_only=True):
    name: str
    description: str
    image: str
    command: list[str]
    ports: list[int]
    cpu: float = 0.5
    memory: int = 256
    env: dict[str, str] = {}
    platforms: list[str] = []
    idle_timeout_seconds: int = 1800


SAMPLE_TEMPLATES = (
    SampleTemplate(
        name="echo",
        description="An HTTP echo app: answers every request with what it received. Runs on every platform "
        "(local: the agent's own echo_app; docker, kubernetes: streamspace/echo:dev from scripts/build-sample-images).",
        image="streamspace/echo:dev",
        command=["{python}", "-m", "streamspace_agent.echo_app", "--port", "{port}"],
        ports=[8080],
        cpu=0.25,
        memory=64,
    ),
    SampleTemplate(
        name="desktop",
        description="A desktop over VNC, watched through the viewer at /sessions/<id>/view. docker, kubernetes: "
        "streamspace/desktop:dev (images/desktop: TigerVNC's Xvnc on 5901, openbox and a panel, a terminal, "
        "Firefox ESR; built by scripts/build-sample-images and docker compose). local: the agent's "
        "streamspace_agent.desktop (Xvnc and an xterm on the agent's host, scripts/desktop-packages).",
        image="streamspace/desktop:dev",
        command=["{python}", "-m", "streamspace_agent.desktop", "--port", "{port}", "--geometry", "1280x800"],
        ports=[5901],
        cpu=1.0,
        memory=1024,
        idle_timeout_seconds=900,
    ),
    SampleTemplate(
        name="firefox",
        description="Firefox ESR alone (a single-application session of streamspace/desktop:dev: "
        "SESSION_APP, maximised, no panel; the session ends when Firefox is closed). docker, kubernetes.",
        image="streamspace/desktop:dev",
        command=[],
        ports=[5901],
        cpu=1.0,
        memory=1024,
        env={"SESSION_APP": "firefox-esr"},
        platforms=["docker", "kubernetes"],
        idle_timeout_seconds=900,
    ),
)


async def install_samples(dsn: str) -> list[tuple[str, bool]]:
    """(name, installed) for each sample template; a template of that name already there is kept."""
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    try:
        done = []
        for sample in SAMPLE_TEMPLATES:
            values = msgspec.structs.astuple(sample)
            async with conn.transaction():
                installed = await conn.fetchrow(REGISTRY["create_template"], *values) is not None
                if installed:
                    await audit(
                        conn, "template.create", sample.name, {"image": sample.image, "command": sample.command}
                    )
            done.append((sample.name, installed))
    finally:
        await conn.close()
    return done


def lifetime(seconds: float | None) -> float | None:
    """A token's lifetime in seconds (None: it never ends), refused unless positive."""
    if seconds is not None and seconds <= 0:
        raise AdminError("a token's lifetime must be positive")
    return seconds


async def create_agent_token(dsn: str, agent_id: str, token: str | None = None, expires_in: float | None = None) -> str:
    if not re.match(ID_PATTERN, agent_id):
        raise AdminError(f"invalid agent id {agent_id!r}: use letters, digits, '.', '_', ':' or '-'")
    token = token or new_token()
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    try:
        async with conn.transaction():
            if await conn.fetchval(REGISTRY["ensure_agent"], agent_id) is not None:
                raise AdminError(f"agent {agent_id!r} was deleted (drained): use a new agent id")
            row = await conn.fetchrow(
                REGISTRY["register_agent_token"], agent_id, hash_token(token), lifetime(expires_in)
            )
            if row["agent_id"] != agent_id:  # raised inside the transaction, so the new agent row is rolled back too
                raise AdminError("that token is already registered to another agent")
            if row["registered"]:
                await audit(conn, "agent_token.create", row["id"], {"agent_id": agent_id})
    finally:
        await conn.close()
    return token


async def rotate_agent_token(
    dsn: str, agent_id: str, overlap: float = DEFAULT_OVERLAP, expires_in: float | None = None
) -> tuple[str, list[asyncpg.Record]]:
    """A new token for a registered agent; its other live tokens end with the overlap (id, expires_at each)."""
    if overlap < 0:
        raise AdminError("the overlap cannot be negative")
    token = new_token()
    token_hash = hash_token(token)
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    try:
        async with conn.transaction():
            agent = await conn.fetchrow(REGISTRY["get_agent"], agent_id)
            if agent is None:
                raise AdminError(f"no agent {agent_id!r} is registered (agent-token create registers one)")
            if agent["deleted_at"] is not None:
                raise AdminError(f"agent {agent_id!r} was deleted (drained): use a new agent id")
            row = await conn.fetchrow(REGISTRY["register_agent_token"], agent_id, token_hash, lifetime(expires_in))
            superseded = await conn.fetch(REGISTRY["supersede_agent_tokens"], agent_id, overlap, token_hash)
            detail = {"agent_id": agent_id, "superseded": [r["id"] for r in superseded], "overlap_seconds": overlap}
            await audit(conn, "agent_token.rotate", row["id"], detail)
    finally:
        await conn.close()
    return token, superseded


async def create_user(dsn: str, username: str, admin: bool = False, password: str | None = None) -> str:
    """Create the account; return its password (generated when none is given)."""
    if not re.match(USERNAME_PATTERN, username):
        raise AdminError(f"invalid username {username!r}: 1-64 letters, digits, '.', '_', '@' or '-'")
    if password is not None and len(password) < MIN_LENGTH:
        raise AdminError(f"a password needs at least {MIN_LENGTH} characters")
    password = password or new_password()
    password_hash = await hash_password(password)
    role = "admin" if admin else "user"
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    try:
        async with conn.transaction():
            created = await conn.fetchval(REGISTRY["create_user"], username, password_hash, role)
            if created is not None:
                await audit(conn, "user.create", created, {"username": username, "role": role})
    finally:
        await conn.close()
    if created is None:
        raise AdminError(f"user {username!r} already exists")
    return password


def main() -> None:
    parser = argparse.ArgumentParser(prog="streamspace-admin", description="StreamSpace operator tasks")
    commands = parser.add_subparsers(dest="group", required=True)
    token_parser = commands.add_parser("agent-token", help="agent tokens")
    token_commands = token_parser.add_subparsers(dest="verb", required=True)
    create = token_commands.add_parser("create", help="register an agent token and print it")
    create.add_argument("agent_id")
    given = create.add_mutually_exclusive_group()
    given.add_argument("--token", help="register this value instead of a new random token")
    given.add_argument("--token-file", type=Path, help="register the value in this file (not printed)")
    create.add_argument("--expires-in", type=float, metavar="SECONDS", help="the token ends after this long")
    rotate = token_commands.add_parser("rotate", help="a new token; the old ones work until the overlap ends")
    rotate.add_argument("agent_id")
    rotate.add_argument(
        "--overlap", type=float, default=DEFAULT_OVERLAP, metavar="SECONDS", help="how long old tokens keep working"
    )
    rotate.add_argument("--expires-in", type=float, metavar="SECONDS", help="the new token ends after this long")
    secrets_parser = commands.add_parser("secrets", help="compose's generated credentials")
    secrets_commands = secrets_parser.add_subparsers(dest="verb", required=True)
    init = secrets_commands.add_parser("init", help="make missing passwords, rewrite the files made from them")
    init.add_argument("directory", type=Path)
    init.add_argument("--gateway", action="append", help="a gateway's POD_NAME (its own Redis user); repeat")
    user_parser = commands.add_parser("user", help="user accounts")
    user_commands = user_parser.add_subparsers(dest="verb", required=True)
    create_user_parser = user_commands.add_parser("create", help="create a user and print their password")
    create_user_parser.add_argument("username")
    create_user_parser.add_argument("--admin", action="store_true", help="an administrator")
    create_user_parser.add_argument("--password", help="this password instead of a generated one")
    template_parser = commands.add_parser("templates", help="session templates")
    template_commands = template_parser.add_subparsers(dest="verb", required=True)
    template_commands.add_parser("install-samples", help="install the sample templates that are missing")
    args = parser.parse_args()

    if args.group == "secrets":
        gateways = tuple(args.gateway or Layout.gateways)
        for name in init_secrets(args.directory, Layout(gateways=gateways)):
            print(f"made {args.directory / name}")
        return
    settings = load_settings(ToolSettings)
    try:
        if args.group == "templates":
            for name, installed in asyncio.run(install_samples(settings.database_url)):
                print(f"{name}: {'installed' if installed else 'kept (a template of that name exists)'}")
            return
        if args.group == "user":
            secret = asyncio.run(create_user(settings.database_url, args.username, args.admin, args.password))
            role = "administrator" if args.admin else "user"
            print(f"{role} {args.username} created; password (shown once, store it now):", file=sys.stderr)
        elif args.verb == "rotate":
            secret, superseded = asyncio.run(
                rotate_agent_token(settings.database_url, args.agent_id, args.overlap, args.expires_in)
            )
            for row in superseded:
                print(f"old token {row['id']} works until {row['expires_at'].isoformat()}", file=sys.stderr)
            print(f"new agent token for {args.agent_id} (shown once, store it now):", file=sys.stderr)
        elif args.token_file is not None:
            token = args.token_file.read_text().strip()
            asyncio.run(create_agent_token(settings.database_url, args.agent_id, token, args.expires_in))
            print(f"agent token of {args.token_file} registered for {args.agent_id}")
            return
        else:
            secret = asyncio.run(create_agent_token(settings.database_url, args.agent_id, args.token, args.expires_in))
            print(f"agent token for {args.agent_id} (shown once, store it now):", file=sys.stderr)
    except (AdminError, OSError, asyncpg.PostgresError) as exc:
        print(f"streamspace-admin: {exc}", file=sys.stderr)
        sys.exit(1)
    print(secret)
