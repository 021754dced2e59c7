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

Prints a table; saves a summary (percentiles, no raw samples) to bench/results/<time>-desktops-<platform>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import asyncpg
import psutil
from aiodocker.exceptions import DockerError
from harness import BENCH_DIR, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import Account, Stack, free_port, kill_sessions, new_account, new_test_env, rabbitmqctl, wait_for

from streamspace_agent.drivers import create_driver
from streamspace_agent.drivers.base import SessionDriver
from streamspace_agent.drivers.settings import load_agent_settings
from streamspace_common.actions import CreateSession, Resources
from streamspace_tools.admin import SAMPLE_TEMPLATES, create_agent_token, install_samples
from streamspace_tools.migrate import create_database_if_missing, migrate

IMAGE = "streamspace/desktop:dev"
AGENT_LABEL = "io.streamspace.agent_id"
PRODUCTION = {"HEARTBEAT_INTERVAL": "10", "SWEEP_INTERVAL": "5", "ACK_TIMEOUT": "10", "LOG_LEVEL": "warning"}
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STATE_SQL = """
SELECT state, reason, extract(epoch FROM state_changed_at - created_at) AS to_running
FROM sessions WHERE id = $1::uuid
"""
# Runs in the viewer page before its scripts: the login token, and the first-frame hook on window.rfb.
FRAME_HOOK = """
sessionStorage.setItem("streamspace.token", %s);
window.__bench = { opened: performance.timeOrigin, stream: null, connected: null, frame: null, hook: null, opens: 0 };
let held = null;
Object.defineProperty(window, "rfb", {
  configurable: true,
  get: () => held,
  set: (client) => {
    held = client;
    if (client && !window.__bench.frame) window.__bench.opens += 1;  // the viewer made a new client: it (re)connects
    if (!client || window.__bench.frame) return;
    window.__bench.stream ??= Date.now();
    client.addEventListener("connect", () => { window.__bench.connected ??= Date.now(); });
    const display = client._display;
    if (typeof client._framebufferUpdate !== "function" || !display || typeof display.pending !== "function") {
      window.__bench.hook = "noVNC's internals changed: no _framebufferUpdate / _display.pending";
      return;
    }
    const update = client._framebufferUpdate.bind(client);
    client._framebufferUpdate = () => {
      const done = update();
      if (done && !window.__bench.frame) {
        const drawn = () => display.pending() ? setTimeout(drawn, 2) : (window.__bench.frame ??= Date.now());
        drawn();
      }
      return done;
    };
  },
});
"""


# What the hook saw, and when the page's HTML and module scripts (view.js, noVNC's) were loaded and run.
PAGE_TIMES = """() => window.__bench && {
  ...window.__bench,
  loaded: performance.timeOrigin + (performance.getEntriesByType("navigation")[0]?.domContentLoadedEventStart || 0),
}"""


@dataclass
class Desktop:
    """One desktop's figures (seconds), or why it failed."""

    session_id: str = ""
    to_running: float = 0.0
    first_frame: float = 0.0
    running_to_frame: float = 0.0
    connected: float = 0.0
    # running -> first frame, in steps: the bench sees `running` and opens the page; the page and its
    # modules load; it reads the session, takes a ticket and opens the stream; the tunnel and the RFB
    # handshake; the first update
    running_to_page: float = 0.0
    page_to_loaded: float = 0.0
    loaded_to_stream: float = 0.0
    stream_to_connect: float = 0.0
    connect_to_frame: float = 0.0
    reconnects: int = 0  # streams the viewer opened again before its first frame (its retries)
    failure: str = ""


@dataclass
class Round:
    desktops: list[Desktop] = field(default_factory=list)
    seconds: float = 0.0
    memory_mib: list[float] = field(default_factory=list)
    network_changed: int = 0

    def figures(self) -> dict[str, Any]:
        good = [d for d in self.desktops if not d.failure]

        def ms(name: str) -> dict[str, float]:
            return {k: round(v, 1) for k, v in summary([getattr(d, name) * 1000 for d in good]).items()}

        return {
            "desktops": len(self.desktops),
            "failures": [d.failure for d in self.desktops if d.failure],
            "seconds": round(self.seconds, 2),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "navigations_retried_err_network_changed": self.network_changed,
            "viewer_reconnects_before_first_frame": sum(d.reconnects for d in good),
            "post_to_running_ms": ms("to_running"),
            "post_to_first_frame_ms": ms("first_frame"),
            "running_to_first_frame_ms": ms("running_to_frame"),
            "post_to_rfb_connect_ms": ms("connected"),
            "steps_ms": {
                "running_to_page_opened": ms("running_to_page"),
                "page_opened_to_loaded": ms("page_to_loaded"),
                "page_loaded_to_stream_opened": ms("loaded_to_stream"),
                "stream_opened_to_rfb_connect": ms("stream_to_connect"),
                "rfb_connect_to_first_frame": ms("connect_to_frame"),
            },
            "memory_per_desktop_mib": {k: round(v, 1) for k, v in summary(self.memory_mib).items()},
            "memory_all_desktops_mib": round(sum(self.memory_mib), 1),
        }


class Bench:
    def __init__(self, args: argparse.Namespace, gateway_url: str, db: asyncpg.Pool, user: Account) -> None:
        self.args, self.url, self.db, self.user = args, gateway_url, db, user
        self.http: aiohttp.ClientSession
        self.context: Any = None
        self.sessions_dir: Path | None = None  # local: LOCAL_SESSION_DIR
        self.agent_id = ""
        self.pages: list[Any] = []
        self.network_changed = 0  # navigations retried (see navigate)

    async def post(self) -> str:
        body = {"template": "desktop", "name": f"bench {uuid.uuid4().hex[:6]}"}
        async with self.http.post(f"{self.url}/api/v1/sessions", json=body, headers=self.user.headers) as response:
            reply = await response.json()
            if response.status != 202:
                raise RuntimeError(f"POST /api/v1/sessions: {response.status} {reply}")
        return str(reply["id"])

    async def until_running(self, session_id: str) -> float:
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            row = await self.db.fetchrow(STATE_SQL, session_id)
            if row is not None and row["state"] == "running":
                return float(row["to_running"])
            if row is not None and row["state"] == "failed":
                raise RuntimeError(f"failed: {row['reason']}")
            await asyncio.sleep(0.02)
        raise RuntimeError(f"not running within {self.args.timeout} s")

    async def navigate(self, page: Any, url: str) -> None:
        """page.goto, again (up to twice) when Chromium aborted it with ERR_NETWORK_CHANGED: its network
        change notifier fires when a Docker network (a bridge interface) comes or goes on this host, as other
        work's do. Counted in the summary; the time lost stays in the figures."""
        for attempt in range(3):
            try:
                await page.goto(url)
                return
            except Exception as exc:
                if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 2:
                    raise
                self.network_changed += 1

    async def first_frame(self, page: Any, session_id: str) -> dict[str, float]:
        """The viewer in this tab; the page's times (epoch s): opened, stream (noVNC's client made),
        connected, frame. Polled with evaluate (the page's CSP refuses the string evaluation wait_for_function needs);
        the times are taken in the page, so the polling interval does not enter them."""
        await self.navigate(page, f"{self.url}/sessions/{session_id}/view")
        deadline = time.monotonic() + self.args.timeout
        while True:
            bench = await page.evaluate(PAGE_TIMES)
            if bench and bench["hook"]:
                raise RuntimeError(bench["hook"])
            if bench and bench["frame"]:
                times = {key: bench[key] / 1000 for key in ("opened", "loaded", "stream", "connected", "frame")}
                return {**times, "reconnects": bench["opens"] - 1}
            if time.monotonic() > deadline:
                raise RuntimeError(f"no frame within {self.args.timeout} s: {bench}")
            await asyncio.sleep(0.05)

    async def one(self) -> Desktop:
        desktop = Desktop()
        tab = await self.context.new_page()  # a tab already open (the console's), not timed
        self.pages.append(tab)
        started = time.time()
        try:
            desktop.session_id = await self.post()
            desktop.to_running = await self.until_running(desktop.session_id)
            running_seen = time.time()
            page = await self.first_frame(tab, desktop.session_id)
        except Exception as exc:  # a failure is a figure here
            desktop.failure = f"{desktop.session_id or 'POST'}: {(str(exc) or repr(exc)).splitlines()[0][:300]}"
            return desktop
        desktop.first_frame = page["frame"] - started
        desktop.running_to_frame = page["frame"] - running_seen
        desktop.connected = page["connected"] - started
        desktop.running_to_page = page["opened"] - running_seen
        desktop.page_to_loaded = page["loaded"] - page["opened"]
        desktop.loaded_to_stream = page["stream"] - page["loaded"]
        desktop.stream_to_connect = page["connected"] - page["stream"]
        desktop.connect_to_frame = page["frame"] - page["connected"]
        desktop.reconnects = int(page["reconnects"])
        return desktop

    async def close_pages(self) -> None:
        for page in self.pages:
            with contextlib.suppress(Exception):
                await page.close()
        self.pages = []

    async def delete(self, desktops: list[Desktop]) -> None:
        ids = [d.session_id for d in desktops if d.session_id]
        for session_id in ids:
            url = f"{self.url}/api/v1/sessions/{session_id}"
            async with self.http.delete(url, headers=self.user.headers) as response:
                if response.status not in (204, 404):
                    raise RuntimeError(f"DELETE {session_id}: {response.status} {await response.text()}")

        async def gone() -> bool:
            left: int = await self.db.fetchval("SELECT count(*) FROM sessions WHERE id = ANY($1::uuid[])", ids)
            return left == 0

        await wait_for(gone, timeout=180)

    async def one_at_a_time(self) -> Round:
        result = Round()
        self.network_changed = 0
        started = time.perf_counter()
        for index in range(self.args.count):
            desktop = await self.one()
            result.desktops.append(desktop)
            if not desktop.failure:
                result.memory_mib += await self.memory([desktop.session_id])
            await self.close_pages()
            await self.delete([desktop])
            print(f"  {index + 1}/{self.args.count}: {describe(desktop)}", flush=True)
        result.seconds = time.perf_counter() - started
        result.network_changed = self.network_changed
        return result

    async def at_once(self) -> Round:
        self.network_changed = 0
        started = time.perf_counter()
        desktops = await asyncio.gather(*(self.one() for _ in range(self.args.count)))
        result = Round(list(desktops), time.perf_counter() - started, network_changed=self.network_changed)
        for desktop in desktops:
            print(f"  {describe(desktop)}", flush=True)
        await asyncio.sleep(self.args.settle)
        result.memory_mib = await self.memory([d.session_id for d in desktops if not d.failure])
        await self.close_pages()
        await self.delete(result.desktops)
        return result

    async def memory(self, session_ids: list[str]) -> list[float]:
        if self.args.platform == "docker":
            return await docker_memory(self.agent_id, session_ids)
        assert self.sessions_dir is not None
        return [local_memory(self.sessions_dir / session_id) for session_id in session_ids]


def describe(desktop: Desktop) -> str:
    if desktop.failure:
        return f"FAILED {desktop.failure}"
    return (
        f"running {desktop.to_running * 1000:6.0f} ms, first frame {desktop.first_frame * 1000:6.0f} ms "
        f"(running -> frame {desktop.running_to_frame * 1000:5.0f} ms)"
    )


async def docker_memory(agent_id: str, session_ids: list[str]) -> list[float]:
    """MiB per session container, as `docker stats` counts it: usage less the inactive page cache."""
    wanted = set(session_ids)
    found = []
    async with aiodocker.Docker() as engine:
        label = json.dumps({"label": [f"{AGENT_LABEL}={agent_id}"]})
        for container in await engine.containers.list(filters=label):
            if container["Labels"].get("io.streamspace.session_id") not in wanted:
                continue
            (stats,) = await container.stats(stream=False)
            memory = stats["memory_stats"]
            extra = memory.get("stats", {})
            inactive = extra.get("total_inactive_file", extra.get("inactive_file", 0))
            found.append((memory["usage"] - inactive) / 2**20)
    return found


def local_memory(session_dir: Path) -> float:
    """MiB: the PSS of the session's process tree (shared pages split among their users)."""
    pid = json.loads((session_dir / "session.json").read_text())["pid"]
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total / 2**20


async def remove_docker_leftovers(agent_id: str, network: str) -> None:
    """Every container and volume labelled with our agent id, and our network (nothing else)."""
    label = json.dumps({"label": [f"{AGENT_LABEL}={agent_id}"]})
    async with aiodocker.Docker() as engine:
        for container in await engine.containers.list(all=True, filters=label):
            with contextlib.suppress(DockerError):
                await container.delete(force=True, v=True)
        volumes = await engine.volumes.list(filters={"label": [f"{AGENT_LABEL}={agent_id}"]})
        for volume in volumes.get("Volumes") or []:
            with contextlib.suppress(DockerError):
                await (await engine.volumes.get(volume["Name"])).delete()
        with contextlib.suppress(DockerError):
            await (await engine.networks.get(network)).delete()


async def rfb_banner(port: int, timeout: float) -> None:
    """Until 127.0.0.1:port says `RFB ` (the VNC server is up, not only a forwarder in front of it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if (await asyncio.wait_for(reader.read(4), timeout=1)) == b"RFB ":
                    return
            finally:
                writer.close()
        await asyncio.sleep(0.02)
    raise RuntimeError(f"no RFB banner on {port} within {timeout} s")


async def floor_docker(agent_id: str, timeout: float) -> float:
    """The engine alone: `docker run` of the image with its port published, until Xvnc says `RFB `."""
    config: dict[str, Any] = {
        "Image": IMAGE,
        "Labels": {AGENT_LABEL: agent_id},
        "ExposedPorts": {"5901/tcp": {}},
        "HostConfig": {"PortBindings": {"5901/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
    }
    async with aiodocker.Docker() as engine:
        started = time.perf_counter()
        container = await engine.containers.run(config, name=f"{agent_id}-floor-{uuid.uuid4().hex[:6]}")
        try:
            data = await container.show()
            port = int(data["NetworkSettings"]["Ports"]["5901/tcp"][0]["HostPort"])
            await rfb_banner(port, timeout)
            return time.perf_counter() - started
        finally:
            await container.delete(force=True, v=True)


async def floor_local(timeout: float) -> float:
    """The desktop process alone (the local template's command), until Xvnc says `RFB `."""
    port = free_port()
    argv = [sys.executable, "-m", "streamspace_agent.desktop", "--port", str(port), "--geometry", "1280x800"]
    started = time.perf_counter()
    quiet = asyncio.subprocess.DEVNULL
    process = await asyncio.create_subprocess_exec(*argv, start_new_session=True, stdout=quiet, stderr=quiet)
    try:
        await rfb_banner(port, timeout)
        return time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def floor_once(args: argparse.Namespace, agent_id: str) -> float:
    if args.platform == "docker":
        return await floor_docker(agent_id, args.timeout)
    return await floor_local(args.timeout)


async def driver_once(driver: SessionDriver) -> float:
    """The agent's driver called directly: create(the desktop template) -> its `running` report (s)."""
    sample = next(sample for sample in SAMPLE_TEMPLATES if sample.name == "desktop")
    spec = CreateSession(
        session_id=str(uuid.uuid4()),
        name=sample.name,
        image=sample.image,
        command=sample.command,
        ports=sample.ports,
        resources=Resources(cpu=sample.cpu, memory=sample.memory),
    )
    started = time.perf_counter()
    report = await driver.create(spec)
    elapsed = time.perf_counter() - started
    await driver.delete(spec.session_id)
    if report.state != "running":
        raise RuntimeError(f"the driver reported {report.state}: {report}")
    return elapsed


async def baselines(args: argparse.Namespace, agent_id: str, network: str, work: Path) -> dict[str, Any]:
    """`--floor` times each, alternating (the machine's load drifts): the platform alone (start -> `RFB `
    banner) and the agent's driver alone (create -> `running`, no control plane), in ms."""
    environ = {
        "AGENT_ID": agent_id,
        "AGENT_PLATFORM": args.platform,
        "DOCKER_NETWORK": network,
        "DOCKER_ENDPOINT": args.endpoint,
        "LOCAL_SESSION_DIR": str(work / "driver-sessions"),
    }
    driver = create_driver(load_agent_settings(environ))
    assert isinstance(driver, SessionDriver)
    platform, driven = [], []
    try:
        for _ in range(args.floor):
            platform.append(await floor_once(args, agent_id))
            driven.append(await driver_once(driver))
    finally:
        await driver.close()
        kill_sessions(work / "driver-sessions")

    def ms(seconds: list[float]) -> dict[str, float]:
        return {k: round(v, 1) for k, v in summary([s * 1000 for s in seconds]).items()}

    return {"floor_start_to_rfb_ms": ms(platform), "driver_create_to_running_ms": ms(driven)}


def check_prerequisites(platform: str) -> None:
    missing = [name for name in ("chromium",) if shutil.which(name) is None]
    if not Path("/usr/share/novnc/core/rfb.js").is_file():
        missing.append("noVNC (/usr/share/novnc)")
    if platform == "local":
        missing += [name for name in ("Xvnc", "xterm") if shutil.which(name) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: scripts/desktop-packages")


async def check_image() -> None:
    async with aiodocker.Docker() as engine:
        try:
            await engine.images.inspect(IMAGE)
        except DockerError:
            sys.exit(f"{IMAGE} is not on the engine: bash scripts/docker-engine && scripts/build-sample-images desktop")


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
        conn = await asyncpg.connect(env.database_url, database="postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{env.database_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await conn.close()


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
            await wait_for(lambda: agent_online(db, agent_id), timeout=60)
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
    for label, key in rows:
        cells = []
        for round_name in ("one_at_a_time", "at_once"):
            figures = summary_[round_name][key]
            cells.append(f"p50 {figures['p50']:7.0f}  p99 {figures['p99']:7.0f}" if figures else "-")
        print(f"{label:28} {cells[0]:>24} {cells[1]:>24}")
    for label, key in STEPS:
        cells = []
        for round_name in ("one_at_a_time", "at_once"):
            figures = summary_[round_name]["steps_ms"][key]
            cells.append(f"p50 {figures['p50']:7.0f}  p99 {figures['p99']:7.0f}" if figures else "-")
        print(f"{label:28} {cells[0]:>24} {cells[1]:>24}")
    for round_name in ("one_at_a_time", "at_once"):
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
        figures = f"p50 {floor_ms['p50']:.0f} ms, p99 {floor_ms['p99']:.0f} ms"
        print(f"floor (the platform alone, start -> RFB banner): {figures}")
        driver_ms = summary_["driver_create_to_running_ms"]
        figures = f"p50 {driver_ms['p50']:.0f} ms, p99 {driver_ms['p99']:.0f} ms"
        print(f"the agent's driver alone (create -> its running report): {figures}")
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
    out = Path(args.json or BENCH_DIR / "results" / f"{started:%Y-%m-%dT%H%M%SZ}-desktops-{variant}.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"summary: {out}")


if __name__ == "__main__":
    main()
