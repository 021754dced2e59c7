"""A desktop as the browser sees it, for bench/desktops.py: POST, `running`, the viewer's first frame drawn
by noVNC (caught by an init script), in rounds one at a time and all at once; figures per round."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from desktop_platform import docker_memory, local_memory
from figures import summary

from streamspace_testkit import Account, wait_until

PRODUCTION = {"HEARTBEAT_INTERVAL": "10", "SWEEP_INTERVAL": "5", "ACK_TIMEOUT": "10", "LOG_LEVEL": "warning"}
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

        await wait_until(gone, timeout=180)

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
