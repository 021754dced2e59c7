"""The machine a bench ran on: CPU, cores, memory, load, the servers' settings and versions; `say` for
progress lines (stderr, stdout is the table)."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import redis.asyncio as aioredis
from harness import BENCH_DIR, load_bench_queries

from streamspace_testkit import new_test_env, with_database


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH_DIR)
    return done.stdout.strip()


async def server_facts(dsn: str, redis_url: str) -> dict[str, Any]:
    """The PostgreSQL settings that matter for commit-bound work, and the servers' versions."""
    conn = await asyncpg.connect(dsn)
    try:
        settings = {row["name"]: row["setting"] for row in await conn.fetch(load_bench_queries()["server_settings"])}
    finally:
        await conn.close()
    redis = aioredis.from_url(redis_url)
    try:
        redis_version = (await redis.info("server"))["redis_version"]
    finally:
        await redis.aclose()
    return {"postgresql": settings, "redis_version": redis_version}


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())


def python_loop_seconds(additions: int = 10_000_000) -> float:
    """How fast this machine runs Python in one process right now: seconds for `additions` integer additions
    in a loop inside a function. The VM's speed drifts: the same loop at a module's top level took 0.99 s at
    15:30 and 0.65 s at 16:53 UTC on 2026-12-06. It does not tell the VM's speed for work that crosses
    processes: at 19:00 it was the fastest yet (0.29-0.48 s) while the peer's latency and the floor row were
    the slowest of the day. Runs compare through the peer and the floor row; this is one more clue."""
    started = time.perf_counter()
    total = 0
    for n in range(additions):
        total += n
    return round(time.perf_counter() - started, 3)


async def machine_info() -> dict[str, Any]:
    base = new_test_env()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "commit": git_commit(),
        "load_average_before": list(psutil.getloadavg()),
        "python_loop_seconds": python_loop_seconds(),
        **await server_facts(with_database(base.database_url, "postgres"), base.redis_url),
    }


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)
