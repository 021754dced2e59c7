"""Desktops in the browser (issue 24): POST /api/v1/sessions -> `running` -> the first framebuffer update
drawn by the viewer's noVNC in headless Chromium; memory per running desktop. One platform a run:

- docker: the agent (AGENT_PLATFORM=docker, DOCKER_ENDPOINT=published or `--endpoint address` as compose
  runs it, a sessions network of its own)
  on the host's Docker Engine (scripts/docker-engine) with streamspace/desktop:dev present
  (scripts/build-sample-images desktop): Xvnc, openbox, tint2 and an xterm in a container;
- local: the agent's `streamspace_agent.desktop` on this host: Xvnc and an xterm (scripts/desktop-packages).

A gateway, a dispatcher and that agent in an isolated database / Redis prefix / RabbitMQ vhost, the sample
`desktop` template, one Chromium (Debian's, `executable_path`; never `playwright install`). For each
desktop: POST, wait for `running` (the row's own timestamps: created_at -> state_changed_at, PostgreSQL's
clock), then open /sessions/{id}/view at once in a tab opened before the POST (as a user who clicks Open
in the console when the card turns running) and wait for the first framebuffer update drawn. "First
frame" is from just before the POST to that moment (wall clock, this host's: Python's time.time() and the
page's Date.now()); its steps are printed too.

How the first frame is seen: the viewer exposes its noVNC client as `window.rfb`; an init script catches
that assignment (before any byte of the stream arrives) and wraps the client's `_framebufferUpdate`: the
first one that completes, once noVNC's render queue is empty (its flip drawn on the visible canvas), is
the first frame (noVNC 1.3, Debian's; the hook says so when noVNC's internals change). The RFB `connect`
event (the handshake done) is recorded too.

Two rounds: `--count` desktops one at a time (each deleted before the next) and `--count` at once (all
POSTed together, each viewer opened as its desktop runs). Memory per running desktop once all of the
second round show their first frame and have settled (`--settle` s): docker, the container's cgroup
memory as `docker stats` shows it (usage - inactive file); local, the PSS of the session's process tree
(the desktop wrapper, Xvnc, xterm). Before the rounds, `--floor` times each (alternating): the platform
alone (start -> the `RFB ` banner, no StreamSpace) and the agent's driver alone (create -> `running`, no
control plane). Every desktop, container, volume and network it made is removed.

    .venv/bin/python bench/desktops.py --platform docker --count 20 [--json FILE]

Prints a table; saves a summary (percentiles, no raw samples) to bench/results/<time>-desktops-<platform>.json
(<platform>: local, docker or docker-address). The browser's side: desktop_browser.py; the platforms alone:
desktop_platform.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from desktop_browser import FRAME_HOOK, PRODUCTION, Bench
from desktop_platform import IMAGE, baselines, check_image, check_prerequisites, remove_docker_leftovers
from figures import line, results_path, write_results

from streamspace_testkit import Stack, drop_database, kill_sessions, new_account, new_test_env, rabbitmqctl, wait_until
from streamspace_tools.admin import create_agent_token, install_samples
from streamspace_tools.migrate import create_database_if_missing, migrate

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextlib.asynccontextmanager
async def isolated_env() -> AsyncIterator[Any]:
    env = new_test_env()
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    rabbitmqctl("add_vhost", env.vhost)
    rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    await install_samples(env.database_url)
    try:
        yield env
    finally:
        rabbitmqctl("delete_vhost", env.vhost)
        await drop_database(env.database_url)


def agent_settings(args: argparse.Namespace, work: Path, network: str) -> dict[str, str]:
    if args.platform == "docker":
        return {"AGENT_PLATFORM": "docker", "DOCKER_NETWORK": network, "DOCKER_ENDPOINT": args.endpoint}
    return {"AGENT_PLATFORM": "local", "LOCAL_SESSION_DIR": str(work / "sessions")}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    tag = uuid.uuid4().hex[:6]
    agent_id, network = f"bench-desk-{tag}", f"ss-bench-desk-{tag}"
    results: dict[str, Any] = {}
    async with isolated_env() as env, aiohttp.ClientSession() as http:
        db = await asyncpg.create_pool(env.database_url, min_size=1, max_size=8)
        work = Path(tempfile.mkdtemp(prefix="bench-desktops-"))
        stack = Stack(env, work)
        try:
            gateway = stack.gateway(f"gateway-{tag}", SESSION_QUOTA=str(2 * args.count + 10), **PRODUCTION)
            dispatcher = stack.dispatcher(f"dispatcher-{tag}", **PRODUCTION)
            await stack.ready(gateway, dispatcher)
            token = await create_agent_token(env.database_url, agent_id)
            settings = agent_settings(args, work, network)
            agent = stack.agent(agent_id, token, [gateway], **settings, **PRODUCTION)
            await stack.ready(agent)
            await wait_until(lambda: agent_online(db, agent_id), timeout=60)
            user = await new_account(env.database_url, f"bench-desk-{tag}")
            bench = Bench(args, gateway.url, db, user)
            bench.http, bench.agent_id = http, agent_id
            if args.platform == "local":
                bench.sessions_dir = work / "sessions"
            if args.floor:
                results.update(await baselines(args, agent_id, network, work))
                print(f"--- floor, start -> RFB banner without StreamSpace: {results['floor_start_to_rfb_ms']}")
                print(f"--- the driver alone, create -> running: {results['driver_create_to_running_ms']}")
            async with async_playwright() as playwright:
                chromium = await playwright.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS)
                bench.context = await chromium.new_context(viewport={"width": 1280, "height": 900})
                await bench.context.add_init_script(FRAME_HOOK % json.dumps(user.token))
                print(f"--- {args.count} desktops one at a time ({args.platform})", flush=True)
                results["one_at_a_time"] = (await bench.one_at_a_time()).figures()
                print(f"--- {args.count} desktops at once ({args.platform})", flush=True)
                results["at_once"] = (await bench.at_once()).figures()
                await chromium.close()
        finally:
            stack.stop_all()
            await db.close()
            if args.platform == "docker":
                await remove_docker_leftovers(agent_id, network)
            else:
                kill_sessions(work / "sessions")
            if args.logs:
                print(stack.dump_logs())
            shutil.rmtree(work, ignore_errors=True)
    return results


async def agent_online(db: asyncpg.Pool, agent_id: str) -> bool:
    status = await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id)
    return bool(status == "online")


def goals(results: dict[str, Any], count: int) -> dict[str, Any]:
    first = results["one_at_a_time"]["post_to_first_frame_ms"].get("p50")
    at_once = results["at_once"]
    return {
        "first_frame_p50_under_2s_one_at_a_time": first is not None and first < 2000,
        f"{count}_at_once_without_a_failure": not at_once["failures"] and at_once["desktops"] == count,
    }


STEPS = [
    ("  running -> page opened", "running_to_page_opened"),
    ("  page opened -> loaded", "page_opened_to_loaded"),
    ("  loaded -> stream opened", "page_loaded_to_stream_opened"),
    ("  stream -> RFB connect", "stream_opened_to_rfb_connect"),
    ("  RFB connect -> 1st frame", "rfb_connect_to_first_frame"),
]


ROUNDS = ("one_at_a_time", "at_once")
P50_P99 = ("p50", "p99")


def figures_of(round_figures: dict[str, Any], key: str) -> dict[str, float]:
    """A round's summary by key: a figure of the round, or one of its steps."""
    return dict(round_figures[key] if key in round_figures else round_figures["steps_ms"][key])


def print_table(summary_: dict[str, Any]) -> None:
    print(f"\n{summary_['platform']}: {summary_['count']} desktops; load average {summary_['load_average']}")
    print(f"{'':28} {'one at a time':>24} {'at once':>24}")
    rows = [
        ("POST -> running", "post_to_running_ms"),
        ("POST -> RFB connect", "post_to_rfb_connect_ms"),
        ("POST -> first frame", "post_to_first_frame_ms"),
        ("running -> first frame", "running_to_first_frame_ms"),
        ("memory per desktop (MiB)", "memory_per_desktop_mib"),
    ]
    for label, key in [*rows, *STEPS]:
        cells = [line(figures_of(summary_[name], key), unit="", spec="7.0f", keys=P50_P99) for name in ROUNDS]
        print(f"{label:28} {cells[0]:>24} {cells[1]:>24}")
    for round_name in ROUNDS:
        figures = summary_[round_name]
        retried = figures["navigations_retried_err_network_changed"]
        failures = f"{len(figures['failures'])} failure(s) {figures['failures'][:3]}"
        reconnects = figures["viewer_reconnects_before_first_frame"]
        print(
            f"{round_name}: {failures}; {figures['seconds']} s; {reconnects} viewer reconnect(s) before a first frame"
        )
        print(f"  {retried} navigation(s) retried (Chromium: network changed)")
    floor_ms = summary_.get("floor_start_to_rfb_ms")
    if floor_ms:
        print(f"floor (the platform alone, start -> RFB banner): {line(floor_ms, spec='.0f', keys=P50_P99)}")
        driver_ms = line(summary_["driver_create_to_running_ms"], spec=".0f", keys=P50_P99)
        print(f"the agent's driver alone (create -> its running report): {driver_ms}")
    print(f"all {summary_['count']} desktops at once: {summary_['at_once']['memory_all_desktops_mib']} MiB")
    print(f"goals: {summary_['goals']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--platform", choices=["docker", "local"], default="docker")
    parser.add_argument(
        "--endpoint", choices=["published", "address"], default="published", help="docker: DOCKER_ENDPOINT"
    )
    parser.add_argument("--count", type=int, default=20, help="desktops one at a time, then at once")
    parser.add_argument("--timeout", type=float, default=180, help="s for running, and for the first frame")
    parser.add_argument("--settle", type=float, default=10, help="s before memory is read with all running")
    parser.add_argument("--floor", type=int, default=5, help="starts without StreamSpace (0: none)")
    parser.add_argument("--json", help="the summary file (default bench/results/<time>-desktops-<platform>.json)")
    parser.add_argument("--logs", action="store_true", help="print the services' logs at the end")
    args = parser.parse_args()
    check_prerequisites(args.platform)
    if args.platform == "docker":
        asyncio.run(check_image())
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = datetime.now(UTC)
    results = asyncio.run(measure(args))
    report = {
        "bench": "desktops",
        "platform": args.platform,
        "count": args.count,
        "started": started.isoformat(timespec="seconds"),
        "machine_cores": os.cpu_count(),
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "docker_endpoint": args.endpoint if args.platform == "docker" else None,
        "image": IMAGE if args.platform == "docker" else "local: streamspace_agent.desktop (Xvnc + xterm)",
        **results,
        "goals": goals(results, args.count),
    }
    print_table(report)
    variant = args.platform if args.platform == "local" or args.endpoint == "published" else "docker-address"
    out = Path(args.json) if args.json else results_path("desktops", variant, when=started)
    print(f"summary: {write_results(out, report)}")


if __name__ == "__main__":
    main()
