"""The plain load test beside the chaos scenarios: 20,000 commands (CHAOS_LOAD_COMMANDS, 5,000 in CI)
to one agent, inserted by 20 concurrent SQL clients, no fault at all: 0 disconnects, 0 second
deliveries, 0 open, 0 executed twice. And the same through the bulk API (issue 27): POST
/api/v1/commands of 1,000 each from 10 clients over both gateways.

The services run with their default heartbeat (10 s) and ack deadline (10 s), as deployed: with the
other tests' 2 s heartbeat (a pong due within 1 s) the agents on the loaded gateway but not in the
burst were disconnected mid-burst on this 2-core machine, and a 2 s ack deadline sends most of a
5,000 burst twice (measured 2026-12-01)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamspace_testkit.servers import Servers

from .harness import BULK_LOAD_TITLE, LOAD_COMMANDS, LOAD_SETTINGS, LOAD_TITLE, ChaosRun, table


@pytest.mark.timeout(420)
async def test_load_from_20_clients_to_one_agent(chaos_servers: Servers, tmp_path: Path) -> None:
    run = ChaosRun(chaos_servers, LOAD_TITLE, tmp_path, settings=LOAD_SETTINGS)
    try:
        await run.start()
        counts = await run.load(LOAD_COMMANDS)
    finally:
        await run.stop()
    print(table([counts]))
    run.assert_clean(counts)
    assert counts.disconnects == 0 and counts.attempts_over_one == 0, counts


@pytest.mark.timeout(420)
async def test_load_through_the_bulk_api_to_one_agent(chaos_servers: Servers, tmp_path: Path) -> None:
    run = ChaosRun(chaos_servers, BULK_LOAD_TITLE, tmp_path, settings=LOAD_SETTINGS)
    try:
        await run.start()
        counts = await run.load_bulk(LOAD_COMMANDS)
    finally:
        await run.stop()
    print(table([counts]))
    run.assert_clean(counts)
    assert counts.disconnects == 0 and counts.attempts_over_one == 0, counts
