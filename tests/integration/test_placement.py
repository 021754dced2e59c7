"""Session placement locks (issue 25, item 5): a creation locks its user (quota) and the agent it picks (free
slots), never every creation at once. On a database of its own, with agents rows standing in for online
agents (placement reads only PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from streamspace_common.db import create_pool
from streamspace_common.sessions import NoAgent, Placement, QuotaExceeded, SessionLifecycle
from streamspace_testkit import RunEnv, with_database
from streamspace_tools.migrate import create_database_if_missing, migrate

PLACEMENT = Placement(template="t", platforms=[], idle_timeout_seconds=0, payload={})
QUOTA = 100
WAIT = 20.0  # seconds a creation that must not wait gets (the machine is loaded); one that must wait is given 3


@pytest.fixture
async def pool(test_env: RunEnv) -> AsyncIterator[asyncpg.Pool]:
    url = with_database(test_env.database_url, f"streamspace_placement_{uuid.uuid4().hex[:8]}")
    await create_database_if_missing(url)
    await migrate(url)
    pool = await create_pool(url, min_size=2, max_size=24)
    try:
        yield pool
    finally:
        await pool.close()


async def add_agents(pool: asyncpg.Pool, count: int, max_sessions: int) -> None:
    for n in range(count):
        capabilities = ["CREATE_SESSION", f"max_sessions={max_sessions}"]
        await pool.execute(
            "INSERT INTO agents (agent_id, status, platform, capabilities, max_sessions, last_heartbeat) "
            "VALUES ($1, 'online', 'local', $2::jsonb, $3, now())",
            f"agent-{n}",
            capabilities,
            max_sessions,
        )


async def add_user(pool: asyncpg.Pool) -> str:
    name = f"u-{uuid.uuid4().hex[:8]}"
    user_id = await pool.fetchval("INSERT INTO users (username, password_hash) VALUES ($1, 'x') RETURNING id", name)
    return str(user_id)


async def test_one_users_open_creation_does_not_block_another_users(pool: asyncpg.Pool) -> None:
    """User A's creation holds its transaction open (its `also` waits): user B's creation completes
    meanwhile (with one global placement lock it waited for A's commit), and A's second creation waits
    for A's first (its quota is decided one creation at a time)."""
    await add_agents(pool, 2, max_sessions=10)
    lifecycle = SessionLifecycle(pool)
    user_a, user_b = await add_user(pool), await add_user(pool)
    inside, release = asyncio.Event(), asyncio.Event()

    async def hold(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
        inside.set()
        await release.wait()

    first = asyncio.create_task(lifecycle.create(str(uuid.uuid4()), user_a, QUOTA, PLACEMENT, hold))
    try:
        await asyncio.wait_for(inside.wait(), WAIT)
        other_user = await asyncio.wait_for(lifecycle.create(str(uuid.uuid4()), user_b, QUOTA, PLACEMENT), WAIT)
        same_user = asyncio.create_task(lifecycle.create(str(uuid.uuid4()), user_a, QUOTA, PLACEMENT))
        done, _ = await asyncio.wait([same_user], timeout=3)
        assert not done, "a creation of the same user must wait for the open one (quota)"
    finally:
        release.set()
    first_row = await asyncio.wait_for(first, WAIT)
    await asyncio.wait_for(same_user, WAIT)
    assert other_user["user_id"] != first_row["user_id"]


async def test_a_burst_never_exceeds_an_agents_capacity_nor_a_users_quota(pool: asyncpg.Pool) -> None:
    """40 users create at once on 3 agents of 2 slots: exactly 6 are placed, at most 2 per agent, the rest
    refused as full. Then one user asks 10 at once with a quota of 3 on roomy agents: exactly 3."""
    await add_agents(pool, 3, max_sessions=2)
    lifecycle = SessionLifecycle(pool)
    users = [await add_user(pool) for _ in range(40)]
    outcomes = await asyncio.gather(
        *(lifecycle.create(str(uuid.uuid4()), user, QUOTA, PLACEMENT) for user in users), return_exceptions=True
    )
    placed = [row for row in outcomes if isinstance(row, asyncpg.Record)]
    refused = [exc for exc in outcomes if isinstance(exc, NoAgent)]
    assert len(placed) == 6 and len(refused) == 34, outcomes
    assert all(exc.full for exc in refused)
    per_agent = Counter(row["agent_id"] for row in placed)
    assert max(per_agent.values()) == 2, per_agent
    stored = await pool.fetch("SELECT agent_id, count(*) FROM sessions GROUP BY agent_id")
    assert all(row["count"] <= 2 for row in stored), stored

    await pool.execute("UPDATE agents SET max_sessions = 0")
    user = await add_user(pool)
    outcomes = await asyncio.gather(
        *(lifecycle.create(str(uuid.uuid4()), user, 3, PLACEMENT) for _ in range(10)), return_exceptions=True
    )
    assert sum(isinstance(row, asyncpg.Record) for row in outcomes) == 3, outcomes
    assert sum(isinstance(exc, QuotaExceeded) for exc in outcomes) == 7, outcomes
