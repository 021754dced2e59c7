"""The retention soak (bench/soak.py) at a tiny size: retention keeps the pruned tables bounded.

Two minutes instead of an hour, 10 commands/s, rows prunable 20 s after they finish, a prune round every
5 s. It asserts that the tables hold far fewer rows than were created (with the pruning off they
hold every one) and that every sample is written; never how fast anything is. The soak starts a
PostgreSQL server of its own (autovacuum on), as the full run does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATE, RETENTION, PRUNE = 10, 20, 5


@pytest.mark.timeout(600)
def test_soak_keeps_pruned_tables_bounded(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "2", "--rate", str(RATE)]
    argv += ["--agents", "10", "--retention", str(RETENTION), "--prune-interval", str(PRUNE)]
    argv += ["--reconcile-interval", "10", "--sample", "15", "--fail-every", "5", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-10000:]
    results = json.loads(out.read_text())
    samples = results["samples"]
    assert len(samples) >= 7
    last = samples[-1]
    assert last["errors"] == 0 and last["created"] > 0
    assert any(s["rows"]["agent_command_attempts"] > 0 for s in samples)  # failures were recorded
    # Every command created stays until `RETENTION` after it finished and a prune round: far fewer than
    # were created in two minutes. Generous: the machine is shared, rounds may run late.
    bound = RATE * (RETENTION + PRUNE + 40)
    assert last["rows"]["agent_commands"] < min(bound, last["created"] / 2), last
    assert last["rows"]["audit_log"] < min(bound, last["created"] / 2), last
    # 10 agents, each asked by 2 dispatchers every 10 s: ~240 inventories in 2 minutes unpruned
    assert last["rows"]["inventories"] < 150, last
    assert (
        "| minute |"
        in subprocess.run(
            [sys.executable, str(ROOT / "bench" / "soak.py"), "--table", str(out)], capture_output=True, text=True
        ).stdout
    )
