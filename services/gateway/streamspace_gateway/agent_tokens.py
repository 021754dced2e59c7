"""Agent tokens as the gateway reads them: the agent a socket's token names, and which tokens ended."""

from __future__ import annotations

import asyncpg

from streamspace_common.db import load_queries

QUERIES = load_queries("streamspace_gateway", "agent_tokens.sql")


class AgentTokens:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def agent_for_token(self, token_hash: str) -> asyncpg.Record | None:
        """The live token's row (agent_id, superseded_at, expires_at); None if unknown, revoked or expired."""
        row: asyncpg.Record | None = await self.pool.fetchrow(QUERIES["agent_for_token"], token_hash)
        return row

    async def revoked_tokens(self, token_hashes: set[str]) -> dict[str, bool]:
        """Those of these agent token hashes that are no longer live, each with whether it expired (else it
        was revoked, or is gone)."""
        if not token_hashes:
            return {}
        rows = await self.pool.fetch(QUERIES["revoked_tokens"], list(token_hashes))
        return {row["token_hash"]: row["expired"] for row in rows}
