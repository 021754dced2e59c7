"""Where the time goes in a bench window: py-spy's stacks of our processes, and what PostgreSQL's backends of
one database are doing (sampled from pg_stat_activity)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg


class Profiles:
    """py-spy on each given process for a window: raw collapsed stacks per process, summarised.

    Off unless a directory is given (`bench/run.py --py-spy DIR`); py-spy samples at 100 Hz from
    outside the process (a few % of a core of its own).
    """

    def __init__(self, out_dir: Path | None, tag: str, pids: dict[str, int]) -> None:
        self.out_dir = out_dir
        self.tag = tag
        self.pids = pids
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self) -> None:
        if self.out_dir is None:
            return
        py_spy = Path(sys.executable).parent / "py-spy"
        for name, pid in self.pids.items():
            out = self.out_dir / f"{self.tag}-{name}.txt"
            argv = [str(py_spy), "record", "--format", "raw", "--nonblocking", "-o", str(out), "--pid", str(pid)]
            self.running[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)

    def stop(self) -> dict[str, Any]:
        summaries: dict[str, Any] = {}
        for name, (process, out) in self.running.items():
            process.send_signal(2)  # SIGINT: py-spy writes what it has
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            if out.exists():
                summaries[name] = {"file": str(out), **summarise_stacks(out.read_text())}
        return summaries


def summarise_stacks(collapsed: str, top: int = 12) -> dict[str, Any]:
    """Top functions by samples on the stack (inclusive) and at the top of it (self), in % of samples."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short_frame(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [(frame, round(100 * n / total, 1)) for frame, n in best]

    return {"samples": total, "self": ranked(own), "inclusive": ranked(inclusive)} if total else {"samples": 0}


def _short_frame(frame: str) -> str:
    """`fn (/long/path/site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py)`: lines merged, paths shortened."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "services/", "libs/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


class PgActivity:
    """What the backends of one database are doing, sampled every `interval` s from pg_stat_activity:
    each active backend's statement (its start) and wait event, as % of the samples: PostgreSQL's share
    of a profile, without pg_stat_statements. The sampler sits in the `postgres` database, so its own
    backend is not counted with the bench's."""

    def __init__(self, dsn: str, query: str, interval: float = 0.01) -> None:
        self.dsn = dsn
        self.query = query
        self.interval = interval
        self.counts: dict[str, int] = {}
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        conn = await asyncpg.connect(self.dsn, database="postgres")
        self._task = asyncio.create_task(self._sample(conn))

    async def _sample(self, conn: asyncpg.Connection) -> None:
        database = self.dsn.rsplit("/", 1)[1]
        try:
            while True:
                rows = await conn.fetch(self.query, database)
                self.samples += 1
                for row in rows:
                    statement = " ".join(row["query"].split())[:90]
                    key = f"{statement} [{row['wait'] or 'on CPU'}]"
                    self.counts[key] = self.counts.get(key, 0) + 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    async def stop(self, top: int = 10) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        busy = sorted(self.counts.items(), key=lambda item: -item[1])[:top]
        return {
            "samples": self.samples,
            "mean_active_backends": round(sum(self.counts.values()) / max(1, self.samples), 2),
            "top_percent_of_samples": [(key, round(100 * n / max(1, self.samples), 1)) for key, n in busy],
        }
