"""Agent rebalancing (issue 25, item 5; services/gateway/streamspace_gateway/rebalance.py): real gateways,
a dispatcher and real agent processes on a database of their own (the fair share counts every replica and
agent of a database)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from streamspace_agent.gateways import MOVE_TRIES, Route
from streamspace_gateway.rebalance import Share
from streamspace_testkit import RunEnv, Stack, wait_until, with_database
from streamspace_tools.admin import create_agent_token
from streamspace_tools.migrate import create_database_if_missing, migrate

AGENTS = 6


def test_the_fair_share_and_its_hysteresis() -> None:
    share = Share(replicas=4, agents=400)
    assert share.fair == 100
    assert share.surplus(105, tolerance=0.05, batch=50) == 0  # within the band: nothing moves
    assert share.surplus(106, tolerance=0.05, batch=50) == 6  # above it: down to the fair share
    assert share.surplus(400, tolerance=0.05, batch=50) == 50  # never more than a batch per round
    assert Share(replicas=2, agents=3).surplus(3, 0.05, 50) == 0  # small fleets: 2 agents of slack
    assert Share(replicas=1, agents=100).surplus(100, 0.05, 50) == 0  # alone: nowhere to go
    assert share.has_room(99) and not share.has_room(100)  # a mover is taken only below the fair share


def test_a_moving_agent_tries_every_other_url_then_connects_without_moving() -> None:
    route = Route(4, random_start=False)
    route.elsewhere(moving=True)
    tried = []
    for _ in range(2):
        tried.append(route.index)
        route.refused()
        assert route.moving
    tried.append(route.index)
    assert sorted(tried) == [1, 2, 3]  # every other URL once, never the one it left
    route.refused()
    assert not route.moving and route.index != 0  # every other one refused it: without the header, not back
    single = Route(1, random_start=True)
    single.elsewhere(moving=True)
    for _ in range(MOVE_TRIES - 1):
        single.refused()
    assert single.moving and single.index == 0  # one URL (a Service): it asks again, MOVE_TRIES times
    single.refused()
    assert not single.moving


def executions(log_dir: Path) -> Counter[str]:
    """Command id -> how many times an agent ran it (their AGENT_EXECUTION_LOG files)."""
    return Counter(
        line.split("\t")[0] for path in log_dir.glob("*.executions") for line in path.read_text().splitlines()
    )


@pytest.mark.timeout(300)
async def test_agents_piled_on_one_gateway_spread_and_no_command_is_lost_or_run_twice(
    test_env: RunEnv, tmp_path: Path
) -> None:
    """Six agents all on gateway-1 (first of their URLs, as before), gateway-2 empty: gateway-1 asks three
    to move (4412), they land on gateway-2, and the counts stay 3 / 3 (no ping-pong). Commands stream to
    every agent throughout: each completes once (the agents' execution logs). Without rebalancing the
    agents stay 6 / 0."""
    url = with_database(test_env.database_url, f"streamspace_rebalance_{uuid.uuid4().hex[:8]}")
    await create_database_if_missing(url)
    await migrate(url)
    stack = Stack(dataclasses.replace(test_env, database_url=url), tmp_path)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        g1 = stack.gateway("gateway-1", REBALANCE_INTERVAL="1")
        g2 = stack.gateway("gateway-2", REBALANCE_INTERVAL="1")
        await stack.ready(g1, g2, stack.dispatcher())
        agent_ids = [f"mover-{n}" for n in range(AGENTS)]
        for agent_id in agent_ids:
            log = str(tmp_path / f"{agent_id}.executions")
            token = await create_agent_token(url, agent_id)
            stack.agent(agent_id, token, [g1, g2], AGENT_EXECUTION_LOG=log, AGENT_GATEWAY_START="first")

        async def per_gateway() -> Counter[str]:
            rows = await pool.fetch("SELECT gateway_pod FROM agents WHERE status = 'online'")
            return Counter(row["gateway_pod"] for row in rows)

        async def spread() -> bool:
            return await per_gateway() == Counter({"gateway-1": 3, "gateway-2": 3})

        ids: list[str] = []

        async def stream() -> None:
            while True:
                for agent_id in agent_ids:
                    ids.append(f"rebalance-{len(ids):05d}")
                    await pool.execute(
                        "INSERT INTO agent_commands (command_id, agent_id, action) VALUES ($1, $2, 'PING')",
                        ids[-1],
                        agent_id,
                    )
                await asyncio.sleep(0.2)

        streaming = asyncio.create_task(stream())
        try:
            await wait_until(spread, timeout=120, interval=0.5)
            await asyncio.sleep(5)  # several rounds more: nobody moves back
            assert await spread(), await per_gateway()
        finally:
            streaming.cancel()

        async def finished() -> bool:
            done = await pool.fetchval(
                "SELECT count(*) FROM agent_commands WHERE command_id = ANY($1) AND status = 'completed'", ids
            )
            return bool(done == len(ids))

        await wait_until(finished, timeout=120, interval=0.5)
        runs = executions(tmp_path)
        assert not [command_id for command_id, n in runs.items() if n > 1 and command_id in ids]
        assert g1.log().count("agent_asked_to_move") >= 3, g1.log()[-3000:]
        assert "agent_asked_to_move" not in g2.log()
    finally:
        stack.stop_all()
        await pool.close()
