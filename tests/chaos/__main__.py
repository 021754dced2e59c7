"""Run every chaos scenario at a larger count and print the table (docs/chaos.md):

    scripts/chaos                      # 1,000 commands per scenario, the load tests (SQL, bulk API) at 20,000
    scripts/chaos --commands 2000 --only 1 8 12 --load 0
    scripts/chaos --only 13 14 15 --load 0                    # the engines' failover (clusters)
    scripts/chaos --only 13 14 15 --load 0 --single-endpoint  # the control: each must fail
    scripts/chaos --scale              # only the scale run: 12 gateways, 4 dispatchers, 5,000 agents
    scripts/chaos --scale --gateways 6 --dispatchers 2 --agents 1000

A failing scenario is marked in the table and the run goes on; the exit status is 1 if any failed.
Logs of every process stay under the printed directory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from pathlib import Path

from streamspace_testkit import release, sweep_stale
from streamspace_testkit.servers import Servers

from .failover import FAILOVER_SCENARIOS, run_failover
from .harness import BULK_LOAD_TITLE, LOAD_SETTINGS, LOAD_TITLE, ChaosRun, Counts, table
from .scale import ScaleRun
from .scenarios import SCENARIOS, ScenarioFailed, run_scenario


async def failovers(
    servers: Servers, root: Path, commands: int, only: list[int], single_endpoint: bool
) -> tuple[list[Counts], list[str]]:
    """Scenarios 13-15 (failover.py): each on a cluster of its own; rows and failures as main's."""
    rows: list[Counts] = []
    failures: list[str] = []
    for scenario in FAILOVER_SCENARIOS:
        if only and scenario.number not in only:
            continue
        log_dir = root / f"{scenario.number:02d}"
        log_dir.mkdir()
        began = time.monotonic()
        try:
            run, counts = await run_failover(servers, scenario, log_dir, commands, single_endpoint)
            rows.append(counts)
            print(f"{scenario.title}: passed in {time.monotonic() - began:.0f} s; {run.note}", flush=True)
            print(table(rows[-1:]), flush=True)
        except ScenarioFailed as exc:
            rows.append(exc.counts)
            failures.append(str(exc))
            print(f"{scenario.title}: FAILED in {time.monotonic() - began:.0f} s: {exc}", flush=True)
        except Exception:
            failures.append(f"{scenario.title}: {traceback.format_exc()}")
            print(f"{scenario.title}: ERROR in {time.monotonic() - began:.0f} s", flush=True)
    return rows, failures


async def main(commands: int, load: int, only: list[int], single_endpoint: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="chaos-run-"))
    print(f"logs under {root}", flush=True)
    servers = Servers()
    rows: list[Counts] = []
    failures: list[str] = []
    started = time.monotonic()
    try:
        await asyncio.to_thread(servers.start)
        for scenario in SCENARIOS:
            if only and scenario.number not in only:
                continue
            log_dir = root / f"{scenario.number:02d}"
            log_dir.mkdir()
            began = time.monotonic()
            try:
                run, counts = await run_scenario(servers, scenario, log_dir, commands)
                rows.append(counts)
                status = "passed"
            except ScenarioFailed as exc:
                rows.append(exc.counts)
                failures.append(str(exc))
                status = "FAILED"
            except Exception:
                failures.append(f"{scenario.title}: {traceback.format_exc()}")
                status = "ERROR"
            print(f"{scenario.title}: {status} in {time.monotonic() - began:.0f} s", flush=True)
            if rows and status == "passed":
                print(table(rows[-1:]), flush=True)
        more_rows, more_failures = await failovers(servers, root, commands, only, single_endpoint)
        rows += more_rows
        failures += more_failures
        for title, bulk in ((LOAD_TITLE, False), (BULK_LOAD_TITLE, True)) if load else ():
            log_dir = root / ("load-bulk" if bulk else "load")
            log_dir.mkdir()
            run = ChaosRun(servers, title, log_dir, settings=LOAD_SETTINGS)
            try:
                await run.start()
                counts = await (run.load_bulk(load) if bulk else run.load(load))
            finally:
                await run.stop()
            rows.append(counts)
            try:
                run.assert_clean(counts)
                assert counts.disconnects == 0 and counts.attempts_over_one == 0, counts
            except AssertionError as exc:
                failures.append(f"{title}: {exc}")
    finally:
        await asyncio.to_thread(servers.stop)
    print(f"\n{table(rows)}\n")
    print(f"total {time.monotonic() - started:.0f} s; logs under {root}")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


async def scale(gateways: int, dispatchers: int, agents: int) -> int:
    """The scale run alone (scale.py), at full size unless told; prints its table (docs/chaos.md)."""
    root = Path(tempfile.mkdtemp(prefix="chaos-scale-"))
    print(f"logs under {root}", flush=True)
    servers = Servers()
    started = time.monotonic()
    try:
        await asyncio.to_thread(servers.start)
        run = ScaleRun(servers, root, gateways=gateways, dispatchers=dispatchers, agents=agents)
        try:
            await run.start()
            print(f"started and connected in {time.monotonic() - started:.0f} s", flush=True)
            counts = await run.run(settle_timeout=900)
        finally:
            await run.stop()
    finally:
        await asyncio.to_thread(servers.stop)
    print(f"\n{counts.table()}\n\ntotal {time.monotonic() - started:.0f} s; logs under {root}")
    return 0 if counts.lost == 0 and counts.twice == 0 and counts.spread_seconds is not None else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--commands", type=int, default=1000, help="commands per scenario (default 1000)")
    parser.add_argument("--load", type=int, default=20_000, help="commands of the load test (0: skip it)")
    parser.add_argument("--only", type=int, nargs="*", default=[], help="scenario numbers to run (default all)")
    parser.add_argument(
        "--single-endpoint",
        action="store_true",
        help="scenarios 13-15: give the services the first node's URL only (the control: each must fail)",
    )
    parser.add_argument("--scale", action="store_true", help="run only the scale run (rolling restart, rebalancing)")
    parser.add_argument("--gateways", type=int, default=12, help="with --scale (default 12)")
    parser.add_argument("--dispatchers", type=int, default=4, help="with --scale (default 4)")
    parser.add_argument("--agents", type=int, default=5000, help="with --scale: simulated agents (default 5000)")
    arguments = parser.parse_args()
    sweep_stale()  # what a killed earlier run left behind (the test kit's safety net, docs/testing.md)
    try:
        if arguments.scale:
            sys.exit(asyncio.run(scale(arguments.gateways, arguments.dispatchers, arguments.agents)))
        sys.exit(asyncio.run(main(arguments.commands, arguments.load, arguments.only, arguments.single_endpoint)))
    finally:
        release()
