"""The benchmark (issues 15 and 27): ours and the peer on the real local servers, one command, one table.

    .venv/bin/python bench/run.py                 # the full run: every goal's size (tens of minutes)
    .venv/bin/python bench/run.py --quick         # the CI size of every row (a few minutes)
    .venv/bin/python bench/run.py --no-peer       # ours only
    .venv/bin/python bench/run.py --only bulk --bulk 20000  # some sections (the file goes to results/sections/)

It starts everything itself in a database, Redis key prefix and RabbitMQ vhost of its own (as the
tests do), and the peer (bench/peer/, built into bench/.peer-venv on first use) in a database and
Redis db/channel of its own; prints one table, every row with its goal and whether it held; writes the
summary to bench/results/<UTC time>-run-<profile>.json (bench/figures.py). What each figure means:
bench/README.md. The sections live in their own modules: flows.py (floor, latency, throughput, drain),
hops.py (REST, Redis hop), bulk.py, sockets.py (idle sockets), streams.py (stream paths).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import structlog
from bulk import measure_bulk
from figures import RAW_DIR, results_path, summary, write_results
from flows import drain_one_agent, floor, latency, throughput_one_agent, throughput_sim_agents
from harness import Completions, ensure_peer_venv, listen
from hops import redis_hop, rest_round_trip
from machine import machine_info, say
from report import table
from simagents import HEARTBEAT_FRAMES_ENV
from sockets import socket_scale
from systems import PROFILES, Peer, Q, Run, Side, Sizes, create_tokens, drop_databases, start_ours, start_peer

from streamspace_testkit import Stack, new_test_env, rabbitmqctl
from streamspace_tools.migrate import create_database_if_missing, migrate

SECTIONS = ("latency", "throughput", "bulk", "scale", "streams")
FLOWS = {"latency", "throughput", "bulk"}  # the sections that run on ours' (and the peer's) stack


async def run_all(
    sizes: Sizes, with_peer: bool, log_dir: Path, py_spy: Path | None, sections: tuple[str, ...] = SECTIONS
) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": await machine_info(), "sizes": asdict(sizes), "sections": sections}
    flows = bool(FLOWS & set(sections))
    peer_python, peer_status = ensure_peer_venv() if with_peer and flows else (None, "not asked for")
    results["peer_status"] = peer_status
    env = new_test_env()
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    rabbitmqctl("add_vhost", env.vhost)
    rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    setup = await asyncpg.connect(env.database_url)
    await setup.execute(Q["install_completion_notify"])
    await setup.execute(Q["install_floor_tables"])
    await setup.close()
    sim_ids = [f"sim-{i:04d}" for i in range(sizes.sim_agents)] if {"throughput", "bulk"} & set(sections) else []
    scale_ids = [f"scale-{i:05d}" for i in range(max(sizes.scale, default=0))] if "scale" in sections else []
    tokens = await create_tokens(env.database_url, ["bench-agent", "bench-hop", "bench-drain", *sim_ids, *scale_ids])
    stack = Stack(env, log_dir)
    listeners: list[asyncpg.Connection] = []
    peer: Peer | None = None
    try:
        if flows:
            ours = await start_ours(stack, tokens)
            sides = [Side("ours", env.database_url, Q["create_command"], "bench-agent", Completions())]
            listeners.append(await listen(env.database_url, "bench_finished", sides[0].completions))
            if peer_python is not None:
                peer = await start_peer(stack, peer_python, env.run_id)
                sides.append(Side("peer", peer.dsn, Q["create_peer_command"], "peer-agent", Completions()))
                listeners.append(await listen(peer.dsn, "peer_completed", sides[1].completions))
            run = Run(sizes, stack, tokens, ours, sides, peer, peer_python, py_spy)
            if "latency" in sections:
                await measure_latencies(run, results)
            if "throughput" in sections:
                await measure_throughput(run, results, sim_ids, log_dir)
            if "bulk" in sections:
                await measure_bulk(run, results, sim_ids, log_dir)
            stack.stop_all()
            stack.services.clear()
        if "scale" in sections:
            say(f"3. socket scale: {', '.join(map(str, sizes.scale))} idle agents on one gateway")
            results["socket_scale"] = [
                await socket_scale(stack, tokens, agents, sizes.idle_seconds, log_dir, py_spy) for agents in sizes.scale
            ]
    except BaseException:
        print(stack.dump_logs()[-20000:], file=sys.stderr)
        raise
    finally:
        stack.stop_all()
        for conn in listeners:
            await conn.close()
        await drop_databases([env.database_url, *([peer.dsn] if peer else [])])
        rabbitmqctl("delete_vhost", env.vhost)
    if "streams" in sections:
        results["streams"] = await measure_streams(sizes)
    results["machine"]["load_average_after"] = list(psutil.getloadavg())
    return results


async def measure_latencies(run: Run, results: dict[str, Any]) -> None:
    sizes, stack, ours = run.sizes, run.stack, run.ours
    say(f"1. cross-replica latency, {sizes.latency} sequential commands each ({', '.join(s.name for s in run.sides)})")
    samples = await latency(run.sides, sizes.latency, sizes.warmup)
    say("4. REST round trip and the Redis hop")
    samples["REST POST round trip"] = await rest_round_trip(stack, ours, sizes.rest, sizes.warmup)
    samples["Redis hop"] = await redis_hop(stack, ours, sizes.hop, sizes.warmup)
    results["latency_ms"] = {name: summary(values) for name, values in samples.items()}
    results["samples_ms"] = samples  # kept out of the summary file (main)


async def measure_throughput(run: Run, results: dict[str, Any], sim_ids: list[str], log_dir: Path) -> None:
    sizes = run.sizes
    say(f"0. the server's floor: {sizes.throughput} single-row INSERTs from {sizes.creators} clients")
    results["floor_rows_per_second"] = await floor(run.sides[0].dsn, sizes.throughput, sizes.creators)
    say(f"2. throughput, 1 agent, {sizes.throughput} commands from {sizes.creators} SQL clients")
    results["throughput"] = await throughput_one_agent(run)
    say(f"2. backlog drain, 1 agent, {sizes.throughput} commands queued first")
    results["drain"] = await drain_one_agent(run)
    for service in [s for s in run.stack.services if s.name.startswith("peer-")]:  # idle now: out of the way
        service.kill()
        run.stack.services.remove(service)
    say(f"2. throughput, {sizes.sim_agents} simulated agents on 2 gateways, 1 and 2 dispatchers")
    results["throughput"] |= await throughput_sim_agents(run, sim_ids, log_dir)


async def measure_streams(sizes: Sizes) -> dict[str, Any]:
    """bench/streams.py's three paths (direct TCP, websockify, ours) on a stack of their own."""
    import streams  # its stack and session template; imported here so the other sections never load it

    say(f"6. streams: {sizes.stream_mib} MiB each way and {sizes.stream_samples} round trips on each path")
    args = argparse.Namespace(mib=sizes.stream_mib, samples=sizes.stream_samples, connects=streams.CONNECTS, perf=None)
    with contextlib.redirect_stdout(sys.stderr):  # its per-path lines are progress here; stdout is the table
        return await streams.measure(args)


def write(results: dict[str, Any], profile: str, out: Path | None, keep_samples: bool) -> list[Path]:
    """The summary (raw samples only with --samples, to bench/results/raw/, with their plot)."""
    samples = results.pop("samples_ms", None)
    sections = "" if set(results["sections"]) == set(SECTIONS) else "-".join(results["sections"])
    path = results_path("run", profile, sections)
    if out is not None:
        path = out / path.name
    written = [write_results(path, results)]
    if keep_samples and samples:
        from plot import plot  # matplotlib, only for raw samples

        raw_path = (out / "raw" if out is not None else RAW_DIR) / path.name.replace(".json", "-samples.json")
        raw = write_results(raw_path, {**results, "samples_ms": samples})
        written += [raw, plot({**results, "samples_ms": samples}, raw.with_suffix(".png"))]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_const", const="quick", dest="profile", default="full", help="the CI size"
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--no-peer", action="store_true", help="measure ours only")
    parser.add_argument("--out", type=Path, help="the summary's directory (default bench/results, or its sections/)")
    parser.add_argument(
        "--samples", action="store_true", help="also every latency sample and their plot, in results/raw/"
    )
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    parser.add_argument("--scale", help="idle socket counts, comma-separated (default: the profile's)")
    parser.add_argument("--bulk", type=int, help="commands of each bulk run (default: the profile's)")
    parser.add_argument(
        "--heartbeat-frames",
        action="store_true",
        help="simulated agents as before ping_liveness and pong_liveness: ping + heartbeat frame",
    )
    parser.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument(
        "--py-spy", type=Path, help="profile our processes in the throughput, bulk and idle windows into this directory"
    )
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier results file")
    args = parser.parse_args()
    if args.from_json:
        print(table(json.loads(args.from_json.read_text())))
        return
    sizes = PROFILES[args.profile]
    if args.scale:
        sizes = replace(sizes, scale=tuple(int(n) for n in args.scale.split(",")))
    if args.bulk:
        sizes = replace(sizes, bulk=args.bulk)
    if args.heartbeat_frames:
        os.environ[HEARTBEAT_FRAMES_ENV] = "1"  # inherited by every simagents.py process
    sections = tuple(args.only.split(",")) if args.only else SECTIONS
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"--only: unknown sections {sorted(unknown)}")
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: the table
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        log_dir = args.logs or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run_all(sizes, not args.no_peer, log_dir, args.py_spy, sections))
    results["profile"] = args.profile
    text = table(results)
    results["table"] = text
    written = write(results, args.profile, args.out, args.samples)
    machine = results["machine"]
    speed = f", Python loop {machine['python_loop_seconds']} s" if "python_loop_seconds" in machine else ""
    print(f"{machine['date']}, {machine['cpu']}, {machine['cores']} cores{speed}, profile {args.profile}")
    print(f"peer: {results['peer_status']}")
    print(text)
    print("wrote " + " and ".join(map(str, written)))


if __name__ == "__main__":
    main()
