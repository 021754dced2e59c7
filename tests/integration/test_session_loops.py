"""The dispatcher's session loops (idle hibernation, reconciliation) and its retention loop through a
PostgreSQL outage, in this process on a database of their own on the real server."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from streamspace_common.db import create_pool
from streamspace_dispatcher.idle import IdleHibernator
from streamspace_dispatcher.reconcile import Reconciler
from streamspace_dispatcher.retention import Retention
from streamspace_testkit import RunEnv, drop_database, wait_until, with_database
from streamspace_tools.migrate import create_database_if_missing, migrate


async def test_the_idle_reconcile_and_retention_loops_survive_postgresql_going_away(test_env: RunEnv) -> None:
    """The two session loops and the retention loop on a database of their own: its connections are cut
    and refused for a while, then allowed again. Each loop logs the outage once and the return once, and
    works after (a session hibernated, an inventory asked for, an old finished command pruned)."""
    database = f"streamspace_loops_{test_env.run_id}"
    url = with_database(test_env.database_url, database)
    await create_database_if_missing(url)
    await migrate(url)
    admin = await asyncpg.connect(test_env.database_url, database="postgres")
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        user_id = await pool.fetchval("INSERT INTO users (username, password_hash) VALUES ('u', 'x') RETURNING id")
        await pool.execute(
            "INSERT INTO agents (agent_id, status, platform, capabilities, last_heartbeat) "
            "VALUES ('a', 'online', 'local', '[\"CREATE_SESSION\", \"INVENTORY_SESSIONS\"]', now())"
        )
        with structlog.testing.capture_logs() as logs:
            loops = [
                asyncio.create_task(IdleHibernator(pool, 0.2).run()),
                asyncio.create_task(Reconciler(pool, 0.2, 3600).run()),
                asyncio.create_task(
                    Retention(pool, audit_days=365, command_days=30, inventory_hours=24, interval=0.2).run()
                ),
            ]
            try:
                await asyncio.sleep(0.5)
                await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
                )
                await asyncio.sleep(3)
                await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
                session_id = await pool.fetchval(
                    "INSERT INTO sessions (user_id, template, agent_id, platform, state, idle_timeout_seconds, "
                    "last_activity_at) VALUES ($1, 'echo', 'a', 'local', 'running', 1, now() - interval '1 minute') "
                    "RETURNING id::text",
                    user_id,
                )
                old = await pool.fetchval(
                    "INSERT INTO agent_commands (agent_id, action, status, created_at, updated_at) "
                    "VALUES ('a', 'PING', 'completed', now() - interval '40 days', now() - interval '40 days') "
                    "RETURNING command_id"
                )

                async def all_worked() -> bool:
                    back = [entry for entry in logs if entry["event"] == "dependency_back"]
                    hibernating = await pool.fetchval(
                        "SELECT count(*) FROM agent_commands WHERE action = 'HIBERNATE_SESSION' AND session_id = $1",
                        session_id,
                    )
                    pruned = not await pool.fetchval("SELECT count(*) FROM agent_commands WHERE command_id = $1", old)
                    return len(back) == 3 and hibernating == 1 and pruned

                await wait_until(all_worked, timeout=30)
            finally:
                for loop in loops:
                    loop.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
        by_loop: dict[str, list[str]] = {}
        for entry in logs:
            if entry["event"] in ("dependency_down", "dependency_back"):
                by_loop.setdefault(entry["dependency"], []).append(entry["event"])
        assert by_loop == {
            "postgres_idle": ["dependency_down", "dependency_back"],
            "postgres_reconcile": ["dependency_down", "dependency_back"],
            "postgres_retention": ["dependency_down", "dependency_back"],
        }, by_loop
        assert await pool.fetchval("SELECT desired_state FROM sessions WHERE id = $1::uuid", session_id) == "hibernated"
        assert await pool.fetchval("SELECT count(*) FROM agent_commands WHERE action = 'INVENTORY_SESSIONS'") == 1
    finally:
        await pool.close()
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
        await drop_database(url)
