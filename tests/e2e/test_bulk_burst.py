"""The bulk path under a burst (issue 27): bulk requests of 1,000 commands to one agent, each command
completed and executed once. 20 requests (20,000 commands) in the test command; the issue's 100 with
`BULK_BURST_REQUESTS=100` (docs/testing.md, "Sizes"). A module of its own: the module-scoped stacks of test_bulk.py (their
dispatchers run the tests' 2 s ack deadline and claim every agent's commands in the run's database) are
gone before it starts, so only this test's dispatcher, with its 60 s deadline, claims the burst."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from integration.test_bulk_requests import BULK, created_ids

from e2e.test_bulk import LOAD_SETTINGS, online, wait_completed
from streamspace_testkit import RunEnv, Stack, wait_until

BURST_REQUESTS = int(os.environ.get("BULK_BURST_REQUESTS", "20"))


@pytest.mark.timeout(600)
async def test_a_burst_of_bulk_requests_to_one_agent_completes_each_once(
    test_env: RunEnv,
    stack: Stack,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    agent_id: str,
    agent_token: str,
) -> None:
    """BURST_REQUESTS x 1,000 commands to one agent, 10 requests at a time over two gateways: every command
    completed, and executed once (the agent's execution log).

    The dispatcher's ack deadline is 60 s, not the default 10 s: on this shared 2-core machine at a load
    average of 25 the agent ran ~250 commands/s, its acks and results reached PostgreSQL more than 10 s
    after the delivery, and the redeliveries (answered from the agent's journal, never run twice) came
    back late again until 3 % had spent their 5 attempts (measured 2026-12-06). What this test holds
    the bulk path to is completeness and exactly-once execution, not speed (bench/run.py measures that)."""
    gateways = [stack.gateway("gateway-burst-a", **LOAD_SETTINGS), stack.gateway("gateway-burst-b", **LOAD_SETTINGS)]
    dispatcher = stack.dispatcher("dispatcher-burst", **(LOAD_SETTINGS | {"ACK_TIMEOUT": "60"}))
    executions = tmp_path / "agent.executions"
    agent = stack.agent(agent_id, agent_token, gateways[:1], AGENT_EXECUTION_LOG=str(executions), **LOAD_SETTINGS)
    await stack.ready(*gateways, dispatcher, agent)
    await wait_until(lambda: online(db, [agent_id]), timeout=30)
    items = [{"agent_id": agent_id, "action": "PING"}] * BULK
    limit = asyncio.Semaphore(10)

    async def one(n: int) -> list[str]:
        async with limit:
            return await created_ids(http, gateways[n % 2].url, items)

    ids = [
        command_id for batch in await asyncio.gather(*(one(n) for n in range(BURST_REQUESTS))) for command_id in batch
    ]
    assert len(set(ids)) == BURST_REQUESTS * BULK
    await wait_completed(db, ids, timeout=480)
    await asyncio.sleep(1.0)  # a late second execution would be in the log by now
    runs = Counter(line.split("\t")[0] for line in executions.read_text().splitlines())
    assert set(runs) >= set(ids)
    assert [command_id for command_id in ids if runs[command_id] != 1] == []
