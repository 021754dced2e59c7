"""The benchmark harness runs end to end at tiny sizes and produces every figure of its one table
(bench/run.py): latency, throughput, drain, the bulk rows, idle sockets, the stream paths, REST.

It asserts that the figures exist and are sane (positive, every command finished, every goal row in
the table with a verdict, the summary written without raw samples and the raw samples and their plot
only where --samples puts them), never how fast anything is: the machine is shared and noisy. The
peer's venv is built by the harness itself when pip can reach the package registry; if it cannot,
ours is still checked and the test is skipped at the end with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LATENCIES = ("ours", "ours claim", "ours to result", "REST POST round trip", "Redis hop")
GOAL_ROWS = (
    "cross-replica latency",
    "commands/s, 1 agent",
    "bulk completed/s, 1 agent",
    "bulk completed/s, 10 agents",
    "10,000 idle sockets",
    "50,000 idle sockets",
    "stream MiB/s each way",
    "stream round trip p50 added over TCP",
    "stream connect",
    "REST create round trip",
)


@pytest.mark.timeout(600)  # building bench/.peer-venv the first time takes a pip install
def test_bench_smoke_run_produces_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--profile", "smoke", "--out", str(tmp_path), "--samples"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-10000:]
    [result_file] = tmp_path.glob("*-run-smoke.json")
    [raw_file] = (tmp_path / "raw").glob("*-run-smoke-samples.json")
    [plot_file] = (tmp_path / "raw").glob("*-run-smoke-samples.png")
    assert plot_file.stat().st_size > 10_000
    results = json.loads(result_file.read_text())
    assert "samples_ms" not in results and len(json.loads(raw_file.read_text())["samples_ms"]["ours"]) > 0
    assert results["table"] in done.stdout
    for row in GOAL_ROWS:  # every goal's row, with its verdict (held, NOT held, or not run at this size)
        [line] = [line for line in results["table"].splitlines() if line.startswith(f"| {row}")]
        assert line.rstrip(" |").endswith(("held", "—", "ratio unchecked)")), line

    for name in LATENCIES:
        figures = results["latency_ms"][name]
        assert figures["n"] == results["sizes"]["latency" if name.startswith("ours") else "rest"]
        assert 0 < figures["p50"] <= figures["p90"] <= figures["p99"] <= figures["max"] < 30_000

    throughput = results["throughput"]
    ours_keys = [key for key in throughput if key.startswith("ours")]
    assert len(ours_keys) == 3  # 1 agent; simulated agents with 1, then 2 dispatchers
    for key in ours_keys:
        figures = throughput[key]
        assert figures["complete"], figures
        assert figures["statuses"] == {"completed": figures["commands"]}
        assert figures["per_second"] > 0
        split = figures["cpu_percent_of_a_core"]
        assert split["machine total (2 cores = 200)"] > 0
        assert any(name.startswith("gateway") and percent > 0 for name, percent in split.items())

    drain = results["drain"]["ours, 1 agent"]
    assert drain["complete"] and drain["statuses"] == {"completed": drain["commands"]}
    assert drain["per_second"] > 0 and drain["created_per_second"] > 0
    assert len(results["floor_rows_per_second"]) == 2
    assert all(rate > 0 for rate in results["floor_rows_per_second"].values())

    bulk = results["bulk"]
    assert len(bulk) == 2  # 1 agent; the simulated agents
    for figures in bulk.values():
        assert figures["complete"] and figures["commands"] == results["sizes"]["bulk"], figures
        assert figures["statuses"] == {"completed": figures["commands"]} and figures["completed_twice"] == 0
        assert figures["per_second"] > 0 and figures["created_per_second"] > 0

    [scale] = results["socket_scale"]
    assert scale["agents"] == results["sizes"]["scale"][0]
    assert scale["connect_seconds"] > 0 and scale["rss_mib"] > 10
    assert scale["idle_cpu_percent_of_a_core"] >= 0

    streams = results["streams"]["paths"]
    assert set(streams) == {"direct TCP", "websockify", "ours (B -> agent on A)"}
    for path in streams.values():
        assert path["mib_per_s_each_way"] > 0 and 0 < path["rtt_p50_ms"] <= path["rtt_p99_ms"]
        assert path["connect_first_ms"] > 0 and 0 < path["connect_p50_ms"] <= path["connect_p90_ms"]
        assert path["connects"] == 20

    if "peer" not in results["latency_ms"]:
        pytest.skip(f"ours checked; the peer was not measured: {results['peer_status']}")
    assert results["latency_ms"]["peer"]["n"] == results["sizes"]["latency"]
    assert throughput["peer, 1 agent"]["complete"]
    assert throughput["peer, 1 agent"]["per_second"] > 0
    assert results["drain"]["peer, 1 agent"]["complete"]
