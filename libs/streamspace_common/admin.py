"""streamspace-admin: operator tasks (§6).

    streamspace-admin agent-token create AGENT_ID [--token VALUE]

registers the agent if it is new and a token for it, and prints the token alone on the last line
of stdout. With --token an operator-chosen value is registered (idempotent), for compose and Helm.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

import asyncpg

from .db import load_queries
from .schemas import ID_PATTERN
from .settings import load_settings
from .tokens import hash_token, new_token

QUERIES = load_queries("streamspace_common")


class AdminError(Exception):
    pass


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="streamspace-admin", description="StreamSpace operator tasks")
    commands = parser.add_subparsers(dest="group", required=True)
    token_parser = commands.add_parser("agent-token", help="agent tokens")
    token_commands = token_parser.add_subparsers(dest="verb", required=True)
    create = token_commands.add_parser("create", help="register an agent token and print it")
    create.add_argument("agent_id")
    create.add_argument("--token", help="register this value instead of a new random token")
    args = parser.parse_args()

    settings = load_settings()
    try:
        token = asyncio.run(create_agent_token(settings.database_url, args.agent_id, args.token))
    except (AdminError, OSError, asyncpg.PostgresError) as exc:
        print(f"streamspace-admin: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"agent token for {args.agent_id} (shown once, store it now):", file=sys.stderr)
    print(token)
