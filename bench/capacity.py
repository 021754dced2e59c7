"""Capacity model (issue 25, docs/capacity.md): what one command, one idle agent socket, one stream and
one session cost each component, measured on this machine, and PostgreSQL's write budget.

    .venv/bin/python bench/capacity.py            # ~8 min; writes bench/results/<UTC time>-capacity-full.json
    .venv/bin/python bench/capacity.py --quick    # ~3 min, smaller sizes

The machine is shared (other test suites run beside it), so nothing here is a wall-clock throughput:
every cost is CPU-seconds a process used (psutil, user + system, read before and after a window)
divided by the operations done in the window, with the same processes' idle rate over an idle window
of the same set-up subtracted. PostgreSQL and Redis are servers of the bench's own (bench/harness.py
OwnPostgres: production's defaults, pg_stat_statements; a throwaway redis-server), so their CPU, WAL
(pg_current_wal_lsn, pg_stat_wal), commits and rows (pg_stat_database, pg_stat_user_tables) are ours
alone; RabbitMQ (the shared one, a vhost of the run's own) carries only retries and is not measured.

Sections: sockets (idle agents on one gateway: RSS, CPU, heartbeat writes per 1,000); commands (REST
PINGs at a paced rate to simulated agents, and to one real agent); sessions (create -> running ->
delete of byte-echo sessions on a real local agent); streams (memory per open stream, CPU per MiB
through it); budget (pgbench on a scratch database of the same server: commits/s and WAL/s it sustains).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from capacity_sections import budget, commands, real_agent_commands, sessions, sockets, streams
from capacity_setup import PRODUCTION, PROFILES, Setup, Sizes, set_up
from figures import results_path, write_results
from harness import OwnPostgres
from machine import machine_info, say, server_facts
from sockets import GATEWAY_FILES_HEADROOM, allow_open_files
from streams import BYTE_ECHO, kill_sessions
from systems import create_tokens

from streamspace_testkit import RedisServer, Service, rabbitmqctl

# --- the run ---------------------------------------------------------------------------------------------


SECTIONS = ("sockets", "commands", "sessions", "streams", "budget")


async def run(sizes: Sizes, sections: tuple[str, ...], log_dir: Path) -> dict[str, Any]:
    if "sockets" in sections:  # the gateways inherit this process's hard file limit: raised first where allowed
        allow_open_files(sizes.idle_agents + GATEWAY_FILES_HEADROOM)
    postgres = OwnPostgres()
    redis = RedisServer()
    redis.start()
    results: dict[str, Any] = {"machine": await machine_info(), "sizes": sizes.__dict__, "sections": sections}
    setup: Setup | None = None
    try:
        setup = await set_up(postgres, redis, log_dir)
        results["bench_postgresql"] = await server_facts(setup.env.database_url, setup.env.redis_url)
        if "sockets" in sections:
            say(f"1. {sizes.idle_agents} idle agents on gateway-a")
            results["sockets"] = await sockets(setup, sizes)
        if "commands" in sections:
            say(f"2. commands at {sizes.rates}/s to {sizes.sim_agents} simulated agents")
            results["commands"] = await commands(setup, sizes)
        if {"sessions", "streams"} & set(sections) or "commands" in sections:
            agent = await start_agent(setup)
            if "commands" in sections:
                say(f"2. {sizes.real_agent_commands} commands to one real agent")
                real = await real_agent_commands(setup, sizes, agent)
                results["commands"]["50/s REST PINGs to one real agent"] = real
            await create_template(setup)
            if "sessions" in sections:
                say(f"3. {sizes.sessions} sessions created and deleted")
                results["sessions"] = await sessions(setup, sizes, agent)
            if "streams" in sections:
                say(f"4. {sizes.streams} open streams, {sizes.stream_mib} MiB through one")
                results["streams"] = await streams(setup, sizes, agent)
        setup.stack.stop_all()
        if "budget" in sections:
            say("5. PostgreSQL's write budget (pgbench)")
            results["budget"] = await budget(postgres, sizes, log_dir)
    except BaseException:
        if setup is not None:
            print(setup.stack.dump_logs()[-20000:], file=sys.stderr)
        raise
    finally:
        if setup is not None:
            setup.stack.stop_all()
            kill_sessions(log_dir / "sessions")
            rabbitmqctl("delete_vhost", setup.env.vhost)
        postgres.destroy()
        redis.stop()
    results["model"] = model(results)
    return results


async def start_agent(setup: Setup) -> Service:
    token = (await create_tokens(setup.env.database_url, ["cap-agent"]))["cap-agent"]
    sessions_dir = str(setup.log_dir / "sessions")
    gateways = [setup.gateway_a, setup.gateway_b]  # on A; tunnels dial back to B
    # Streams past the per-session (4) and per-agent (64) limits: the streams section opens many to one session
    limits = {"STREAM_MAX_PER_SESSION": "10000", "STREAM_MAX_PER_AGENT": "10000"}
    agent = setup.stack.agent("cap-agent", token, gateways, LOCAL_SESSION_DIR=sessions_dir, **PRODUCTION, **limits)
    await setup.stack.ready(agent)
    return agent


async def create_template(setup: Setup) -> None:
    template = {"name": "byte-echo", "command": BYTE_ECHO, "platforms": ["local"]}
    async with (
        aiohttp.ClientSession(headers=setup.admin_headers) as http,
        http.post(f"{setup.gateway_a.url}/api/v1/templates", json=template) as response,
    ):
        assert response.status == 201, await response.text()


def model(results: dict[str, Any]) -> dict[str, Any]:
    """The per-1,000 figures of docs/capacity.md, from the measured per-operation costs."""
    out: dict[str, Any] = {}
    if "sockets" in results:
        s = results["sockets"]
        out["per 1,000 idle agents"] = {
            "gateway RSS MiB": s["gateway_rss_mib_per_1000"],
            "CPU % of a core": s["cpu_percent_of_a_core_per_1000"],
            "WAL bytes/s": s["wal_bytes_per_second_per_1000"],
        }
    if "commands" in results:
        fastest = [row for name, row in results["commands"].items() if "simulated" in name][-1]
        out["per 1,000 commands/s (cores)"] = {
            name: round(ms, 2) for name, ms in fastest["cpu_ms_per_op"].items() if "load generator" not in name
        }
        out["per 1,000 commands/s: WAL MiB/s"] = round(fastest["wal_bytes_per_op"] * 1000 / 2**20, 2)
        out["per 1,000 commands/s: commits/s"] = round(fastest["commits_per_op"] * 1000)
    if "streams" in results:
        s = results["streams"]
        out["per 1,000 open streams: RSS MiB"] = {
            k: round(v * 1000 / 1024, 1) for k, v in s["rss_kib_per_stream"].items()
        }
        out["per MiB/s each way: CPU % of a core"] = {
            k: round(v / 10, 2) for k, v in s["cpu_ms_per_mib_each_way"].items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_const", const="quick", dest="profile", default="full")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    parser.add_argument("--out", type=Path, help="the JSON summary (default: bench/figures.py results_path)")
    args = parser.parse_args()
    sections = tuple(args.only.split(",")) if args.only else SECTIONS
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"--only: unknown sections {sorted(unknown)}")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    only = "" if set(sections) == set(SECTIONS) else "-".join(sections)
    out = args.out or results_path("capacity", args.profile, only)
    with tempfile.TemporaryDirectory(prefix="capacity-") as scratch:
        log_dir = args.logs or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run(PROFILES[args.profile], sections, log_dir))
    write_results(out, results)
    print(json.dumps(results["model"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
