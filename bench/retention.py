"""Pruning finished commands at 10 million rows: batches of DELETE vs dropping time partitions
(docs/operations.md "Data lifecycle").

A throwaway database (migrated, dropped at the end) is filled with `--rows` finished commands created
evenly over the last `--span` days (generate_series; indexes rebuilt after the load, then VACUUM
ANALYZE, as autovacuum would leave it), so the rows older than the 30-day retention are
rows * (span - 30) / span. Then:

1. baseline: one client creates a command every `--every` ms for `--baseline` s; its latencies;
2. the dispatcher's own `prune_commands` statement (services/dispatcher/.../retention.sql, run on a
   connection with the dispatcher's settings) in batches of 1,000 with the production pause between
   batches, up to `--phase-rows` rows, while the client keeps creating: every batch's duration (the
   time its row locks are held: one transaction), the rows/s, and the creations' latencies;
3. the same with batches of 10,000;
4. the prototype: a table range-partitioned by day holding `--parts-rows` rows over 10 days; the
   oldest partition is dropped (DETACH ... CONCURRENTLY, then DROP) while the client creates into it.

    .venv/bin/python bench/retention.py [--rows 10000000] [--span 40] [--phase-rows 1500000]

Writes bench/results/<UTC time>-retention-<rows>-rows.json. Takes ~20 min at 10 million rows on the 2-core dev
machine and needs ~5 GB of disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from figures import percentile, results_path, write_results
from harness import BENCH_DIR, load_bench_queries

from streamspace_common.db import server_settings
from streamspace_dispatcher.retention import PRUNE_PAUSE, QUERIES
from streamspace_testkit import drop_database, with_database
from streamspace_tools.migrate import create_database_if_missing, migrate

Q = load_bench_queries(BENCH_DIR / "retention.sql")
RETENTION_DAYS = 30


def log(message: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} {message}", flush=True)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


class Creator:
    """One client creating a command every `every` seconds; the latency of each."""

    def __init__(self, conn: asyncpg.Connection, query: str, every: float) -> None:
        self.conn, self.query, self.every = conn, query, every
        self.latencies: list[float] = []
        self.running = True

    async def run(self) -> None:
        while self.running:
            start = time.perf_counter()
            await self.conn.execute(self.query)
            self.latencies.append(time.perf_counter() - start)
            await asyncio.sleep(max(0.0, self.every - (time.perf_counter() - start)))

    async def during(self, work: Any) -> tuple[Any, list[float]]:
        self.latencies, self.running = [], True
        task = asyncio.create_task(self.run())
        try:
            return await work, self.latencies
        finally:
            self.running = False
            await task


async def fill(conn: asyncpg.Connection, rows: int, span: float) -> dict[str, float]:
    started = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '1GB'")
    await conn.execute(Q["agents"])
    indexes = await conn.fetch(Q["plain_indexes"])
    await conn.execute(Q["drop_keys"])
    for row in indexes:
        await conn.execute(f'DROP INDEX "{row["indexname"]}"')
    chunk = 1_000_000
    for first in range(0, rows, chunk):
        await conn.execute(Q["fill"], first, min(first + chunk, rows) - 1, rows, span)
        log(f"filled {min(first + chunk, rows):,} rows")
    loaded = time.perf_counter()
    await conn.execute(Q["add_keys"])
    for row in indexes:
        await conn.execute(row["indexdef"])
    await conn.execute(Q["fill_attempts"])
    indexed = time.perf_counter()
    await conn.execute("VACUUM ANALYZE agent_commands")
    await conn.execute("VACUUM ANALYZE agent_command_attempts")
    return {
        "load_s": round(loaded - started, 1),
        "index_s": round(indexed - loaded, 1),
        "vacuum_s": round(time.perf_counter() - indexed, 1),
    }


async def prune(pool: asyncpg.Pool, batch: int, limit: int) -> dict[str, Any]:
    """The dispatcher's prune_commands, `batch` rows per transaction, until `limit` rows or none left."""
    durations: list[float] = []
    rows = attempts = 0
    started = time.perf_counter()
    while rows < limit:
        if durations:
            await asyncio.sleep(PRUNE_PAUSE)
        begin = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["no_jit"])
            gone = await conn.fetchrow(QUERIES["prune_commands"], RETENTION_DAYS, batch)
        durations.append(time.perf_counter() - begin)
        rows += gone["rows"]
        attempts += gone["attempts"]
        if len(durations) % 100 == 0:
            log(f"batch {batch}: {rows:,} rows, last batch {durations[-1] * 1000:.0f} ms")
        if gone["rows"] < batch:
            break
    elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "rows": rows,
        "attempts": attempts,
        "seconds": round(elapsed, 1),
        "rows_per_s": round(rows / elapsed),
        "rows_per_s_without_pauses": round(rows / sum(durations)),
        "batch_ms": summary(durations),
        "first_10_batches_ms": round(sum(durations[:10]) / max(1, len(durations[:10])) * 1000, 1),
        "last_10_batches_ms": round(sum(durations[-10:]) / max(1, len(durations[-10:])) * 1000, 1),
    }


async def partitions(conn: asyncpg.Connection, dsn: str, every: float, rows: int) -> dict[str, Any]:
    days = 10
    await conn.execute(Q["parts_table"])
    for day in range(days + 1):
        await conn.execute(await conn.fetchval(Q["parts_partition"], day))
    await conn.execute(Q["parts_indexes"])
    await conn.execute(Q["parts_fill"], rows, float(days))
    await conn.execute("VACUUM ANALYZE parts")
    oldest = f"parts_{days - 1}"
    size = await conn.fetchval("SELECT count(*) FROM " + oldest)  # a whole day
    other = await asyncpg.connect(dsn)
    creator = Creator(other, Q["parts_create"], every)

    async def drop() -> dict[str, float]:
        start = time.perf_counter()
        await conn.execute(f"ALTER TABLE parts DETACH PARTITION {oldest} CONCURRENTLY")
        detached = time.perf_counter()
        await conn.execute(f"DROP TABLE {oldest}")
        return {
            "detach_ms": round((detached - start) * 1000, 1),
            "drop_ms": round((time.perf_counter() - detached) * 1000, 1),
        }

    await asyncio.sleep(0.5)
    timing, latencies = await creator.during(drop())
    await other.close()
    return {"rows_in_partition": size, **timing, "create_ms_during_drop": summary(latencies)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--span", type=float, default=40.0, help="days the rows' creation is spread over")
    parser.add_argument("--phase-rows", type=int, default=1_500_000, help="rows pruned in batches of 1,000")
    parser.add_argument("--parts-rows", type=int, default=1_000_000)
    parser.add_argument("--every", type=float, default=5.0, help="ms between creations")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds of creations without pruning")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    database = f"streamspace_bench_retention_{uuid.uuid4().hex[:8]}"
    dsn = with_database(args.database_url, database)
    every = args.every / 1000
    await create_database_if_missing(dsn)
    result: dict[str, Any] = {"rows": args.rows, "span_days": args.span, "retention_days": RETENTION_DAYS}
    result["load_average_before"] = os.getloadavg()
    try:
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        result["fill"] = await fill(conn, args.rows, args.span)
        result["before"] = dict(await conn.fetchrow(Q["counts"], RETENTION_DAYS))
        log(f"filled: {result['fill']} {result['before']}")
        creating = await asyncpg.connect(dsn, server_settings=server_settings("gateway", "bench"))
        creator = Creator(creating, Q["create_command"], every)
        _, base = await creator.during(asyncio.sleep(args.baseline))
        result["create_ms_baseline"] = summary(base)
        log(f"baseline creations: {result['create_ms_baseline']}")
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=1, server_settings=server_settings("dispatcher", "bench")
        )
        for batch, limit in ((1000, args.phase_rows), (10_000, 1 << 62)):
            figures, latencies = await creator.during(prune(pool, batch, limit))
            figures["create_ms_during"] = summary(latencies)
            result[f"batches_of_{batch}"] = figures
            log(f"batches of {batch}: {figures}")
        result["after"] = dict(await conn.fetchrow(Q["counts"], RETENTION_DAYS))
        await pool.close()
        await creating.close()
        result["partitions"] = await partitions(conn, dsn, every, args.parts_rows)
        log(f"partitions: {result['partitions']}")
        await conn.close()
    finally:
        await drop_database(with_database(args.database_url, database))
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=str))
    rows = f"{args.rows // 1_000_000}m" if args.rows % 1_000_000 == 0 else str(args.rows)
    print(f"written: {write_results(results_path('retention', f'{rows}-rows'), result)}")


if __name__ == "__main__":
    asyncio.run(main())
