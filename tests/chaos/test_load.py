"""The plain load test beside the chaos scenarios: 20,000 commands (CHAOS_LOAD_COMMANDS, 5,000 in CI)
to one agent, inserted by 20 concurrent SQL clients, no fault at all: 0 disconnects, 0 second
deliveries, 0 open, 0 executed twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import LOAD_COMMANDS, ChaosRun, table
from .servers import Servers


@pytest.mark.timeout(420)
async def test_load_from_20_clients_to_one_agent(chaos_servers: Servers, tmp_path: Path) -> None:
    run = ChaosRun(chaos_servers, "load: 20 SQL clients, one agent", tmp_path)
    try:
        await run.start()
        counts = await run.load(LOAD_COMMANDS)
    finally:
        await run.stop()
    print(table([counts]))
    run.assert_clean(counts)
    assert counts.disconnects == 0 and counts.attempts_over_one == 0, counts
