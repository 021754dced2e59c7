"""The scale run at CI size (scale.py): 4 gateways, 2 dispatchers, 200 simulated agents, commands flowing
while every gateway is restarted in turn. 0 lost, 0 run twice, and the agents spread again: without the
rebalancing (rebalance.py) the last gateway restarted stays empty, since nothing moves an agent that is
connected. `scripts/chaos --scale` runs it at 12 gateways, 4 dispatchers and 5,000 agents."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamspace_testkit.servers import Servers

from .scale import ScaleRun


@pytest.mark.timeout(900)
async def test_rolling_restart_of_every_gateway_loses_nothing_and_agents_spread_again(
    chaos_servers: Servers, tmp_path: Path
) -> None:
    run = ScaleRun(chaos_servers, tmp_path, gateways=4, dispatchers=2, agents=200)
    try:
        await run.start()
        counts = await run.run(settle_timeout=240)
    finally:
        await run.stop()
    print(counts.table())
    assert counts.commands > 0 and counts.lost == 0, counts.table()
    assert counts.twice == 0, counts.table()
    assert counts.spread_seconds is not None, counts.table()
    assert counts.moved > 0, counts.table()
