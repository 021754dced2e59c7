"""The engines' own failover (failover.py): scenarios 13-15 at CHAOS_COMMANDS (300 in CI), each on a
cluster started for it from Debian's packages (Patroni + etcd, Redis Sentinel, a RabbitMQ cluster)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streamspace_testkit.servers import Servers

from .failover import FAILOVER_SCENARIOS, FailoverScenario, run_failover
from .harness import COMMANDS, table
from .scenarios import ScenarioFailed
from .test_chaos import tails

MISSING = [tool for tool in ("patroni", "etcd", "redis-sentinel") if not shutil.which(tool)]


@pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (scripts/cluster-packages)")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", FAILOVER_SCENARIOS, ids=lambda s: f"{s.number:02d}-{s.fault.__name__}")
async def test_failover(chaos_servers: Servers, scenario: FailoverScenario, tmp_path: Path) -> None:
    try:
        run, counts = await run_failover(chaos_servers, scenario, tmp_path, COMMANDS)
    except ScenarioFailed as exc:
        print(table([exc.counts]))
        print(tails(tmp_path))
        raise
    print(table([counts]), run.note)
