"""The chaos suite (issue 13): each scenario streams commands across two gateways, two dispatchers and
four agent processes (one HA pair), applies one fault mid-stream on throwaway servers, waits until
nothing is open, and counts: nothing lost, nothing completed twice, re-runs only of what a killed
process had in flight, plus the scenario's own invariants (scenarios.py). CHAOS_COMMANDS sets the
count (300 in CI); `scripts/chaos` runs them all at 1,000 and prints the table (docs/chaos.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamspace_testkit.servers import Servers

from .harness import COMMANDS, table
from .scenarios import SCENARIOS, Scenario, ScenarioFailed, run_scenario


def tails(log_dir: Path) -> str:
    return "\n".join(
        f"===== {log.name} =====\n{log.read_text(errors='replace')[-6000:]}" for log in sorted(log_dir.glob("*.log"))
    )


@pytest.mark.timeout(420)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: f"{s.number:02d}-{s.fault.__name__}")
async def test_scenario(chaos_servers: Servers, scenario: Scenario, tmp_path: Path) -> None:
    try:
        run, counts = await run_scenario(chaos_servers, scenario, tmp_path, COMMANDS)
    except ScenarioFailed as exc:
        print(table([exc.counts]))
        print(tails(tmp_path))
        raise
    print(table([counts]), run.note)
