"""Retention of finished commands, their attempts and inventories (docs/operations.md "Data lifecycle").

Real PostgreSQL (the run's database): rows are inserted back-dated, then the dispatcher's Retention
prunes them as its loop would. Its pruning is global, so every assertion reads this test's own agent's
rows. Each test also checks that something old did go, so none passes with the pruning switched off.
That the loop survives PostgreSQL going away is the generic test of every dispatcher loop
(tests/integration/test_session_loops.py).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
from prometheus_client import REGISTRY

from streamspace_dispatcher.retention import Retention

DAY = timedelta(days=1)
OPEN = ("pending", "sent", "acknowledged")
FINISHED = ("completed", "failed", "cancelled")


def retention(db: asyncpg.Pool, batch: int = 1000, max_batches: int = 100) -> Retention:
    """The dispatcher's defaults (30 days, 24 hours), without the pause between batches."""
    return Retention(
        db, audit_days=365, command_days=30, inventory_hours=24, batch=batch, max_batches=max_batches, pause=0
    )


async def new_agent(db: asyncpg.Pool, agent_id: str) -> str:
    await db.execute("INSERT INTO agents (agent_id) VALUES ($1)", agent_id)
    return agent_id


async def new_session(db: asyncpg.Pool, agent_id: str) -> str:
    user_id = await db.fetchval(
        "INSERT INTO users (username, password_hash) VALUES ($1, 'x') RETURNING id", f"u{uuid.uuid4().hex[:12]}"
    )
    session_id: str = await db.fetchval(
        "INSERT INTO sessions (user_id, template, agent_id, platform, state) "
        "VALUES ($1, 'echo', $2, 'local', 'stopped') RETURNING id::text",
        user_id,
        agent_id,
    )
    return session_id


async def command(
    db: asyncpg.Pool,
    agent_id: str,
    status: str,
    age: timedelta,
    *,
    action: str = "PING",
    session_id: str | None = None,
    changed: timedelta | None = None,
    attempts: int = 0,
) -> str:
    """A command created `age` ago and last changed `changed` ago (default: then too), with `attempts` rows."""
    command_id: str = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action, session_id, status, created_at, updated_at, completed_at) "
        "VALUES ($1, $2, $3, $4::text, now() - $5::interval, now() - $6::interval,"
        " CASE WHEN $4::text IN ('completed', 'failed', 'cancelled') THEN now() - $6::interval END)"
        " RETURNING command_id",
        agent_id,
        action,
        session_id,
        status,
        age,
        age if changed is None else changed,
    )
    for attempt in range(1, attempts + 1):
        await db.execute(
            "INSERT INTO agent_command_attempts (command_id, attempt, left_status, outcome, ended_at)"
            " VALUES ($1, $2, 'sent', 'pending', now() - $3::interval)",
            command_id,
            attempt,
            age,
        )
    return command_id


async def left(db: asyncpg.Pool, agent_id: str) -> set[str]:
    rows = await db.fetch("SELECT command_id FROM agent_commands WHERE agent_id = $1", agent_id)
    return {row["command_id"] for row in rows}


async def attempts_of(db: asyncpg.Pool, command_ids: list[str]) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM agent_command_attempts WHERE command_id = ANY($1::text[])", command_ids
    )
    return count


def pruned_metric(table: str) -> float:
    return REGISTRY.get_sample_value("streamspace_dispatcher_rows_pruned_total", {"table": table}) or 0.0


async def test_finished_commands_past_retention_go_with_their_attempts(db: asyncpg.Pool, agent_id: str) -> None:
    """Pins: finished commands kept forever. Completed, failed and cancelled commands older than
    COMMAND_RETENTION_DAYS are deleted with their attempt rows, and counted per table."""
    agent = await new_agent(db, agent_id)
    old = [await command(db, agent, status, 31 * DAY, attempts=2) for status in FINISHED]
    before = pruned_metric("agent_commands"), pruned_metric("agent_command_attempts")
    await retention(db).prune_all()
    assert await left(db, agent) == set()
    assert await attempts_of(db, old) == 0
    assert pruned_metric("agent_commands") - before[0] >= 3
    assert pruned_metric("agent_command_attempts") - before[1] >= 6


async def test_open_commands_of_any_age_stay(db: asyncpg.Pool, agent_id: str) -> None:
    """Pins: pruning by age alone. A pending, sent or acknowledged command is never deleted, however
    old (an agent offline for a year still gets it), nor its attempts; old inventories that are open stay too."""
    agent = await new_agent(db, agent_id)
    kept = [await command(db, agent, status, 400 * DAY, attempts=1) for status in OPEN]
    kept += [await command(db, agent, status, 400 * DAY, action="INVENTORY_SESSIONS") for status in OPEN]
    gone = await command(db, agent, "completed", 400 * DAY)
    await retention(db).prune_all()
    assert await left(db, agent) == set(kept)
    assert gone not in await left(db, agent)
    assert await attempts_of(db, kept) == len(OPEN)


async def test_rows_within_the_retention_stay(db: asyncpg.Pool, agent_id: str) -> None:
    """Pins: a retention counted wrongly. A command finished 29 days ago stays; so does one created 40
    days ago that finished yesterday (its retention starts when it last changed); an inventory of 23
    hours stays, one of 25 hours goes (while a newer one of the agent is kept)."""
    agent = await new_agent(db, agent_id)
    young = await command(db, agent, "completed", 29 * DAY)
    late = await command(db, agent, "failed", 40 * DAY, changed=DAY)
    recent_inventory = await command(db, agent, "completed", timedelta(hours=23), action="INVENTORY_SESSIONS")
    old = await command(db, agent, "completed", 31 * DAY)
    old_inventory = await command(db, agent, "completed", timedelta(hours=25), action="INVENTORY_SESSIONS")
    await retention(db).prune_all()
    assert await left(db, agent) == {young, late, recent_inventory}
    assert not {old, old_inventory} & await left(db, agent)


async def test_the_newest_inventory_and_a_live_sessions_newest_command_stay(db: asyncpg.Pool, agent_id: str) -> None:
    """Pins: pruning what is still referenced. Each agent keeps its newest completed inventory however
    old (a failed newer one does not replace it); a session that exists keeps its newest command, and
    loses it once the session row is gone."""
    agent = await new_agent(db, agent_id)
    inventories = [
        await command(db, agent, "completed", days * DAY, action="INVENTORY_SESSIONS", attempts=1) for days in (5, 4, 3)
    ]
    failed_inventory = await command(db, agent, "failed", 2 * DAY, action="INVENTORY_SESSIONS", attempts=3)
    session = await new_session(db, agent)
    create = await command(db, agent, "completed", 60 * DAY, action="CREATE_SESSION", session_id=session)
    stop = await command(db, agent, "completed", 50 * DAY, action="STOP_SESSION", session_id=session)
    await retention(db).prune_all()
    assert await left(db, agent) == {inventories[-1], stop}
    assert await attempts_of(db, [*inventories[:-1], failed_inventory, create]) == 0
    assert await attempts_of(db, [inventories[-1]]) == 1

    await db.execute("DELETE FROM sessions WHERE id = $1::uuid", session)
    await retention(db).prune_all()
    assert await left(db, agent) == {inventories[-1]}


async def test_a_backlog_larger_than_a_batch_drains_over_batches_and_rounds(db: asyncpg.Pool, agent_id: str) -> None:
    """Pins: one batch per round, or a round that never ends. With batches of 4 and at most 3 batches a
    round, a backlog of 25 loses 12 rows a round, oldest first, and is gone after the third round."""
    agent = await new_agent(db, agent_id)
    backlog = [await command(db, agent, "completed", (1000 - n) * DAY, attempts=1) for n in range(25)]
    pruner = retention(db, batch=4, max_batches=3)
    rows, attempts = await pruner.prune(pruner.commands)
    assert (rows, attempts) == (12, 12)
    assert await left(db, agent) == set(backlog[12:])
    await pruner.prune(pruner.commands)
    assert await left(db, agent) == set(backlog[24:])
    rows, _ = await pruner.prune(pruner.commands)
    assert rows >= 1
    assert await left(db, agent) == set()
