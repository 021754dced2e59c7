"""Run every chaos scenario at a larger count and print the table (docs/chaos.md):

    scripts/chaos                      # 1,000 commands per scenario, the load tests (SQL, bulk API) at 20,000
    scripts/chaos --commands 2000 --only 1 8 12 --load 0

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

from .harness import BULK_LOAD_TITLE, LOAD_SETTINGS, LOAD_TITLE, ChaosRun, Counts, table
from .scenarios import SCENARIOS, ScenarioFailed, run_scenario
from .servers import Servers


async def main(commands: int, load: int, only: list[int]) -> int:
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--commands", type=int, default=1000, help="commands per scenario (default 1000)")
    parser.add_argument("--load", type=int, default=20_000, help="commands of the load test (0: skip it)")
    parser.add_argument("--only", type=int, nargs="*", default=[], help="scenario numbers to run (default all)")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.commands, arguments.load, arguments.only)))
