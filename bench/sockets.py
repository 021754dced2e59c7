"""Idle agent sockets on one gateway (bench/run.py's scale rows; bench/capacity.py's sockets section):
connect them from simulated-agent processes, as many as the file limit allows, and measure RSS and idle CPU."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
from pathlib import Path
from typing import Any

import asyncpg
from harness import CpuSplit, rss_mib, start_sim_agents
from profiling import Profiles
from systems import SERVICE_SETTINGS

from streamspace_testkit import Service, Stack

SOCKETS_PER_SIM_PROCESS = 10_000  # the open-file limit is per process (20,000 here)
# Each simulated-agent process connects from a loopback address of its own: one (source, gateway)
# address pair has only the ephemeral port range (~28,000 ports), short of 50,000 sockets.
SIM_SOURCE = "127.0.0.{}"
GATEWAY_FILES_HEADROOM = 1_024  # the gateway's pool, Redis, listeners, logs


async def connect_idle(
    stack: Stack, name: str, gateway: Service, tokens: dict[str, str], work: Path
) -> tuple[list[Service], float]:
    """Idle simulated agents (one liveness frame every 10 s, as the real agent: an unsolicited pong) on
    `gateway`, one process per SOCKETS_PER_SIM_PROCESS each from a loopback address of its own; the processes
    once every agent has its welcome, and the seconds the slowest took."""
    ids = list(tokens)
    files = []
    for chunk in range(0, len(ids), SOCKETS_PER_SIM_PROCESS):  # each process stays under its own file limit
        agents_file = work / f"{name}-{chunk}.json"
        part = ids[chunk : chunk + SOCKETS_PER_SIM_PROCESS]
        agents_file.write_text(json.dumps([[agent_id, tokens[agent_id], gateway.url] for agent_id in part]))
        files.append(agents_file)
    timeout = 120 + len(ids) / 20
    started = await asyncio.gather(
        *(
            start_sim_agents(stack, f"{name}-{i}", f, "idle", timeout, source=SIM_SOURCE.format(2 + i))
            for i, f in enumerate(files)
        )
    )
    return [sim for sim, _ in started], max(connect for _, connect in started)


async def socket_scale(
    stack: Stack, tokens: dict[str, str], asked: int, idle_seconds: float, work: Path, py_spy: Path | None
) -> dict[str, Any]:
    """`asked` idle agents on a fresh gateway alone: connect time, RSS, idle CPU, the file limit."""
    # As many as the gateway's file limit allows: where the hard limit cannot be raised (no
    # CAP_SYS_RESOURCE, as in this dev machine's container: 20,000) the row says so and shows fewer.
    hard = allow_open_files(asked + GATEWAY_FILES_HEADROOM)
    agents = min(asked, hard - GATEWAY_FILES_HEADROOM)
    ids = [f"scale-{i:05d}" for i in range(agents)]
    # A fresh fleet: the previous size's gateway was killed holding these agents' leases, and the new
    # simulated agents have new instance ids, so they would wait as standbys until the leases lapse.
    conn = await asyncpg.connect(stack.env.database_url)
    await conn.execute("DELETE FROM agent_leases WHERE agent_id = ANY($1::text[])", ids)
    await conn.close()
    gateway = stack.gateway(f"gateway-scale-{agents}", **SERVICE_SETTINGS)
    await stack.ready(gateway)
    rss_before = rss_mib(gateway.process.pid)
    sims, seconds = await connect_idle(stack, f"scale-sim-{agents}", gateway, {i: tokens[i] for i in ids}, work)
    await asyncio.sleep(min(5.0, idle_seconds))  # the connect burst's tail (registrations) settles
    cpu = CpuSplit(
        {"gateway": lambda: [gateway.process.pid], "simulated agents": lambda: [sim.process.pid for sim in sims]}
    )
    profiles = Profiles(py_spy, f"idle-{agents}", {"gateway": gateway.process.pid})
    cpu.start()
    profiles.start()
    await asyncio.sleep(idle_seconds)
    split = cpu.stop()
    figures = {
        "profiles": profiles.stop(),
        "agents": agents,
        "agents_asked": asked,
        "open_files_hard_limit": hard,
        "connect_seconds": round(seconds, 2),
        "rss_mib": rss_mib(gateway.process.pid),
        "rss_mib_before": rss_before,
        "open_files_limit": open_files_logged(gateway),
        "idle_cpu_percent_of_a_core": split["gateway"],
        "idle_seconds": idle_seconds,
        "sim_cpu_percent_of_a_core": split["simulated agents"],
    }
    for service in (*sims, gateway):
        service.kill()
        stack.services.remove(service)
    return figures


def allow_open_files(needed: int) -> int:
    """The hard file limit the gateway inherits from this process, raised to `needed` where that is allowed
    (root: CAP_SYS_RESOURCE); the gateway raises its soft limit to it itself. Returns the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, needed))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return needed if hard == resource.RLIM_INFINITY else hard


def open_files_logged(gateway: Service) -> int | None:
    """The soft file limit the gateway says it runs with (its `open_files_limit` log line)."""
    for line in gateway.log().splitlines():
        if '"open_files_limit"' in line:
            with contextlib.suppress(ValueError, KeyError):
                return int(json.loads(line)["soft"])
    return None
