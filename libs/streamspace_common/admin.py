"""streamspace-admin: operator tasks (§6).

    streamspace-admin agent-token create AGENT_ID [--token VALUE | --token-file PATH]
    streamspace-admin secrets init DIR [--gateway POD_NAME ...]
    streamspace-admin user create USERNAME [--admin] [--password VALUE]
    streamspace-admin templates install-samples

`agent-token create` registers the agent if it is new and a token for it, and prints the token alone
on the last line of stdout. With --token an operator-chosen value is registered (idempotent), for
compose and Helm; --token-file reads that value from a file and does not print it. `secrets init`
writes compose's generated credentials into DIR (deploy_secrets.py). `user create` creates an account
(the first administrator: --admin) and prints its password alone on the last line of stdout: the one
given, or a strong generated one.
`templates install-samples` installs the sample templates (SAMPLE_TEMPLATES) that are missing and
prints one line per template: installed, or kept (one of that name exists already).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

import asyncpg
import msgspec

from .db import init_connection, load_queries
from .deploy_secrets import Layout, init_secrets
from .passwords import MIN_LENGTH, hash_password, new_password
from .schemas import ID_PATTERN, USERNAME_PATTERN
from .settings import load_settings
from .tokens import hash_token, new_token

QUERIES = load_queries("streamspace_common")


class AdminError(Exception):
    pass


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
        description="A desktop over VNC (TigerVNC's Xvnc and an xterm, RFB on the session's port, watched through "
        "the viewer at /sessions/<id>/view). local: the agent's streamspace_agent.desktop, which needs Xvnc on the "
        "agent's host (scripts/desktop-packages); docker, kubernetes: an image streamspace/desktop:dev serving VNC on "
        "5901 (not built here).",
        image="streamspace/desktop:dev",
        command=["{python}", "-m", "streamspace_agent.desktop", "--port", "{port}", "--geometry", "1280x800"],
        ports=[5901],
        cpu=1.0,
        memory=1024,
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
            done.append((sample.name, await conn.fetchval(QUERIES["install_template"], *values) is not None))
    finally:
        await conn.close()
    return done


async def create_agent_token(dsn: str, agent_id: str, token: str | None = None) -> str:
    if not re.match(ID_PATTERN, agent_id):
        raise AdminError(f"invalid agent id {agent_id!r}: use letters, digits, '.', '_', ':' or '-'")
    token = token or new_token()
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(QUERIES["ensure_agent"], agent_id)
            owner = await conn.fetchval(QUERIES["register_token"], agent_id, hash_token(token))
            if owner != agent_id:  # raised inside the transaction, so the new agent row is rolled back too
                raise AdminError("that token is already registered to another agent")
    finally:
        await conn.close()
    return token


async def create_user(dsn: str, username: str, admin: bool = False, password: str | None = None) -> str:
    """Create the account; return its password (generated when none is given)."""
    if not re.match(USERNAME_PATTERN, username):
        raise AdminError(f"invalid username {username!r}: 1-64 letters, digits, '.', '_', '@' or '-'")
    if password is not None and len(password) < MIN_LENGTH:
        raise AdminError(f"a password needs at least {MIN_LENGTH} characters")
    password = password or new_password()
    password_hash = await hash_password(password)
    conn = await asyncpg.connect(dsn)
    try:
        created = await conn.fetchval(QUERIES["create_user"], username, password_hash, "admin" if admin else "user")
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
    settings = load_settings()
    try:
        if args.group == "templates":
            for name, installed in asyncio.run(install_samples(settings.database_url)):
                print(f"{name}: {'installed' if installed else 'kept (a template of that name exists)'}")
            return
        if args.group == "user":
            secret = asyncio.run(create_user(settings.database_url, args.username, args.admin, args.password))
            role = "administrator" if args.admin else "user"
            print(f"{role} {args.username} created; password (shown once, store it now):", file=sys.stderr)
        elif args.token_file is not None:
            token = args.token_file.read_text().strip()
            asyncio.run(create_agent_token(settings.database_url, args.agent_id, token))
            print(f"agent token of {args.token_file} registered for {args.agent_id}")
            return
        else:
            secret = asyncio.run(create_agent_token(settings.database_url, args.agent_id, args.token))
            print(f"agent token for {args.agent_id} (shown once, store it now):", file=sys.stderr)
    except (AdminError, OSError, asyncpg.PostgresError) as exc:
        print(f"streamspace-admin: {exc}", file=sys.stderr)
        sys.exit(1)
    print(secret)
