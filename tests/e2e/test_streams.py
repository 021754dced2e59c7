"""Streams (docs/streams.md) with real processes: two gateways, a dispatcher, a local agent, real Xvnc.

The agent is connected to gateway A (both are in its GATEWAY_URLS, A first: it dials tunnels back only
to gateways it is configured for); every browser stream is opened on gateway B, so each byte
crosses replicas through the agent's dial-back (never through Redis or the command socket).
Gateways run with STREAM_TICKET_TTL=2 (the expiry test waits it out); the agent with
STREAM_MAX_PER_SESSION=2 (the limit test opens a third).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamspace_testkit import Api, RunEnv, Service, Stack, kill_sessions, new_account, new_user, wait_until
from streamspace_testkit.browser import ARTIFACTS, BROWSER_ARGS
from streamspace_testkit.browser import MISSING_DESKTOP_TOOLS as MISSING
from streamspace_tools.admin import create_agent_token

DESKTOP = ["{python}", "-m", "streamspace_agent.desktop", "--port", "{port}"]
BYTE_ECHO = ["{python}", "-m", "streamspace_agent.byte_echo", "--port", "{port}"]
CHUNK = 64 * 1024
# names of this module's own (the run's database is shared: test_sessions edits the sample "desktop")
DESKTOP_T, ECHO_T, IDLE_T = "stream-desktop", "stream-byte-echo", "stream-byte-echo-idle"


class StreamStack:
    def __init__(self, stack: Stack, a: Service, b: Service, agent: Service, agent_id: str, sessions: Path) -> None:
        self.stack, self.a, self.b, self.agent, self.agent_id, self.sessions = stack, a, b, agent, agent_id, sessions


@pytest.fixture(scope="module")
async def streams(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StreamStack]:
    base = tmp_path_factory.mktemp("streams")
    stack = Stack(test_env, base)
    # names of this stack's own: tests/e2e/security/test_revocation.py starts one too, in the same run
    tag = uuid.uuid4().hex[:6]
    a = stack.gateway(f"gateway-sa-{tag}", STREAM_TICKET_TTL="2", SESSION_QUOTA="100")
    b = stack.gateway(f"gateway-sb-{tag}", STREAM_TICKET_TTL="2", SESSION_QUOTA="100")
    dispatcher = stack.dispatcher(f"dispatcher-st-{tag}", IDLE_CHECK_INTERVAL="0.5")
    await stack.ready(a, b, dispatcher)
    agent_id = f"stream-agent-{test_env.run_id}-{tag}"
    token = await create_agent_token(test_env.database_url, agent_id)
    sessions = base / "sessions"
    # GATEWAY_URLS names both (the agent dials tunnels back only to its own gateways); it connects to the
    # first, A, and stays there while A is up
    agent = stack.agent(
        agent_id, token, [a, b], LOCAL_SESSION_DIR=str(sessions), STREAM_MAX_PER_SESSION="2", STREAM_IDLE_TIMEOUT="30"
    )
    await stack.ready(agent)
    yield StreamStack(stack, a, b, agent, agent_id, sessions)
    stack.stop_all()
    kill_sessions(sessions)
    print(stack.dump_logs())


@pytest.fixture(scope="module")
async def stream_admin(streams: StreamStack, test_env: RunEnv) -> Api:
    admin = await new_account(test_env.database_url, f"st-admin-{uuid.uuid4().hex[:6]}", admin=True)
    return Api(streams.a.url, admin.token)


@pytest.fixture(scope="module")
async def owner(stream_admin: Api) -> Api:
    admin_api = stream_admin
    for name, command, idle in (
        (DESKTOP_T, DESKTOP, 3600),
        (ECHO_T, BYTE_ECHO, 3600),
        (IDLE_T, BYTE_ECHO, 2),
    ):
        body = {"name": name, "command": command, "platforms": ["local"], "idle_timeout_seconds": idle}
        status, reply = await admin_api.call("POST", "/api/v1/templates", body)
        assert status in (201, 409), reply
    return await new_user(admin_api, "streamer")


async def running_session(api: Api, streams: StreamStack, template: str) -> dict[str, Any]:
    session = await api.create(template, agent_id=streams.agent_id)
    return await api.until_state(session["id"], "running", timeout=30)


async def ticket(api: Api, session_id: str) -> str:
    _, body = await api.call("POST", f"/api/v1/sessions/{session_id}/stream-ticket", expect=201)
    return str(body["ticket"])


async def connect(
    http: aiohttp.ClientSession, gateway: Service, session_id: str, ticket_: str | None
) -> aiohttp.ClientWebSocketResponse:
    query = "" if ticket_ is None else f"?ticket={ticket_}"
    url = f"ws://127.0.0.1:{gateway.port}/api/v1/sessions/{session_id}/stream{query}"
    return await http.ws_connect(url, protocols=("binary",), max_msg_size=0, autoping=True)


async def receive_at_least(ws: aiohttp.ClientWebSocketResponse, count: int, timeout: float = 20) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while len(data) < count:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.BINARY, message
            data += message.data
    return data


def rss_kib(service: Service) -> int:
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(shutil.which("Xvnc") is None, reason="Xvnc missing: scripts/desktop-packages installs it")
async def test_rfb_handshake_through_the_tunnel_across_replicas(streams: StreamStack, owner: Api) -> None:
    session = await running_session(owner, streams, DESKTOP_T)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        ws = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        assert ws.protocol == "binary"
        greeting = await receive_at_least(ws, 12)
        setup = time.monotonic() - started
        assert greeting[:12] in (b"RFB 003.008\n", b"RFB 003.007\n", b"RFB 003.003\n"), greeting
        # our side of the handshake: version, then security type 1 (None): the server sends its init
        await ws.send_bytes(b"RFB 003.008\n")
        types = await receive_at_least(ws, 2)
        assert 1 in types[1:], types  # None offered (our own auth is in front)
        await ws.send_bytes(b"\x01")
        result = await receive_at_least(ws, 4)
        assert result[:4] == b"\x00\x00\x00\x00", result  # SecurityResult OK
        await ws.close()
    print(f"tunnel set-up to the first RFB byte: {setup * 1000:.1f} ms")
    log_b = streams.b.log()
    assert "stream_open" in log_b and "stream_open" not in streams.a.log()  # B took the browser


async def test_50_mb_both_ways_arrive_intact(streams: StreamStack, owner: Api) -> None:
    session = await running_session(owner, streams, ECHO_T)
    payload = os.urandom(50 * 1024 * 1024)
    received = hashlib.sha256()
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        started = time.monotonic()

        async def send() -> None:
            for offset in range(0, len(payload), CHUNK):
                await ws.send_bytes(payload[offset : offset + CHUNK])

        async def receive() -> None:
            count = 0
            while count < len(payload):
                message = await ws.receive()
                assert message.type == aiohttp.WSMsgType.BINARY, message
                received.update(message.data)
                count += len(message.data)
            assert count == len(payload)

        async with asyncio.timeout(90):
            await asyncio.gather(send(), receive())
        seconds = time.monotonic() - started
        await ws.close()
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
    print(f"50 MiB each way in {seconds:.2f} s: {50 / seconds:.1f} MiB/s each way")
    gateway = await metrics(streams.b)
    agent = await metrics(streams.agent)
    for direction in ("to_browser", "to_session"):
        assert gateway[f'streamspace_gateway_stream_bytes_total{{direction="{direction}"}}'] >= len(payload)
    for direction in ("to_gateway", "to_session"):
        assert agent[f'streamspace_agent_tunnel_bytes_total{{direction="{direction}"}}'] >= len(payload)
    assert gateway["streamspace_gateway_tunnel_setup_seconds_count"] >= 1
    assert 'streamspace_gateway_stream_bytes_total{direction="to_browser"}' not in await metrics_text(streams.a)


async def metrics_text(service: Service) -> str:
    async with aiohttp.ClientSession() as http, http.get(service.metrics_url) as response:
        return await response.text()


async def metrics(service: Service) -> dict[str, float]:
    values = {}
    for line in (await metrics_text(service)).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_no_per_message_deflate_even_when_the_browser_offers_it(streams: StreamStack, owner: Api) -> None:
    """Browsers offer permessage-deflate on every WebSocket; a stream declines it (a desktop's frames are
    compressed already, and deflating every byte costs CPU at the gateway): the bytes still go both ways."""
    session = await running_session(owner, streams, ECHO_T)
    async with aiohttp.ClientSession() as http:
        url = f"ws://127.0.0.1:{streams.b.port}/api/v1/sessions/{session['id']}/stream"
        ws = await http.ws_connect(
            f"{url}?ticket={await ticket(owner, session['id'])}", protocols=("binary",), compress=15
        )
        assert ws.compress == 0
        await ws.send_bytes(b"x" * 100_000)
        assert await receive_at_least(ws, 100_000) == b"x" * 100_000
        await ws.close()


async def test_a_reader_that_stops_reading_does_not_grow_memory(streams: StreamStack, owner: Api) -> None:
    session = await running_session(owner, streams, ECHO_T)
    watched = {"gateway B": streams.b, "gateway A": streams.a, "agent": streams.agent}
    before = {name: rss_kib(service) for name, service in watched.items()}
    chunk = os.urandom(CHUNK)
    sent = 0
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        # write 200 MiB and never read: the echo's replies fill every buffer and stall the writes
        deadline = time.monotonic() + 20
        while sent < 200 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(ws.send_bytes(chunk), 3)
            except TimeoutError:
                break
            sent += len(chunk)
        after = {name: rss_kib(service) for name, service in watched.items()}
        await ws.close()
    growth = {name: (after[name] - before[name]) // 1024 for name in watched}
    print(f"stalled after {sent / 2**20:.1f} MiB; RSS growth MiB: {growth}")
    assert sent < 200 * 1024 * 1024, "the writes never stalled: something buffers without bound"
    assert all(mib < 40 for mib in growth.values()), growth


async def test_closing_the_browser_closes_the_agent_side(streams: StreamStack, owner: Api) -> None:
    session = await running_session(owner, streams, ECHO_T)
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        await ws.send_bytes(b"ping")
        assert await receive_at_least(ws, 4) == b"ping"
        await ws.close()

        async def agent_closed() -> bool:
            return "tunnel_closed" in streams.agent.log() and session["id"] in _closed_sessions(streams.agent)

        await wait_until(agent_closed, timeout=10)


def _closed_sessions(agent: Service) -> str:
    return "\n".join(line for line in agent.log().splitlines() if "tunnel_closed" in line)


async def test_killing_the_session_closes_the_stream_with_a_reason(streams: StreamStack, owner: Api) -> None:
    session = await running_session(owner, streams, ECHO_T)
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        await ws.send_bytes(b"hello")
        assert await receive_at_least(ws, 5) == b"hello"
        record = json.loads((streams.sessions / session["id"] / "session.json").read_text())
        os.killpg(record["pid"], signal.SIGKILL)
        async with asyncio.timeout(10):
            message = await ws.receive()
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        assert message.data == 4000 and "session closed" in str(message.extra), message


async def test_hibernating_the_session_closes_the_stream_with_a_reason(streams: StreamStack, owner: Api) -> None:
    session = await running_session(owner, streams, ECHO_T)
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        await ws.send_bytes(b"hello")
        assert await receive_at_least(ws, 5) == b"hello"
        await owner.call("POST", f"/api/v1/sessions/{session['id']}/hibernate", expect=202)
        async with asyncio.timeout(10):
            message = await ws.receive()
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        assert message.data == 4000 and "hibernated" in str(message.extra), message
    status, body = await owner.call("POST", f"/api/v1/sessions/{session['id']}/stream-ticket")
    assert status == 409 and body["error"]["code"] == "session_not_running", body


async def test_refused_without_a_valid_ticket(streams: StreamStack, owner: Api, stream_admin: Api) -> None:
    session = await running_session(owner, streams, ECHO_T)
    other = await new_user(stream_admin, "other-streamer")
    async with aiohttp.ClientSession() as http:
        for bad in (None, "sstk_" + "x" * 43, "not-a-ticket"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await connect(http, streams.b, session["id"], bad)
            assert refused.value.status == 401
        used = await ticket(owner, session["id"])
        ws = await connect(http, streams.b, session["id"], used)
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as reused:
            await connect(http, streams.a, session["id"], used)  # on the other replica too
        assert reused.value.status == 401
        expired = await ticket(owner, session["id"])
        await asyncio.sleep(2.5)  # STREAM_TICKET_TTL=2
        with pytest.raises(aiohttp.WSServerHandshakeError) as late:
            await connect(http, streams.b, session["id"], expired)
        assert late.value.status == 401
    # another user's session: no ticket (404, its existence is not revealed), and their own ticket
    # does not open it
    status, body = await other.call("POST", f"/api/v1/sessions/{session['id']}/stream-ticket")
    assert status == 404, body
    theirs = await other.create(ECHO_T, agent_id=streams.agent_id)
    await other.until_state(theirs["id"], "running")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as foreign:
            await connect(http, streams.b, session["id"], await ticket(other, theirs["id"]))
        assert foreign.value.status == 401


async def test_streams_per_session_are_limited(streams: StreamStack, owner: Api) -> None:
    session = await running_session(owner, streams, ECHO_T)
    async with aiohttp.ClientSession() as http:
        first = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        second = await connect(http, streams.a, session["id"], await ticket(owner, session["id"]))
        for ws in (first, second):
            await ws.send_bytes(b"x")
            assert await receive_at_least(ws, 1) == b"x"
        third = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        async with asyncio.timeout(15):
            message = await third.receive()
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4003, message
        assert "2 streams open already" in str(message.extra), message
        for ws in (first, second):
            await ws.close()


async def test_an_open_stream_keeps_the_session_from_hibernating(streams: StreamStack, owner: Api) -> None:
    session = await running_session(owner, streams, IDLE_T)  # idle timeout 2 s
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, streams.b, session["id"], await ticket(owner, session["id"]))
        await asyncio.sleep(5)  # silent, but watched
        assert (await owner.session(session["id"]))["state"] == "running"
        await ws.close()
    await owner.until_state(session["id"], "hibernated", timeout=15)


@pytest.mark.skipif(bool(MISSING), reason=f"missing {', '.join(MISSING)}: scripts/desktop-packages installs them")
@pytest.mark.timeout(180)
async def test_console_in_a_real_browser(streams: StreamStack, stream_admin: Api) -> None:
    """Chromium logs into gateway B's console, creates a desktop, opens the viewer (noVNC connected), and
    types `touch <file>` into the desktop's xterm: the file appears in the session's directory. All of
    it under the console's Content-Security-Policy, which blocks nothing the pages or noVNC do."""
    from playwright.async_api import async_playwright

    username, password = f"viewer-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    await stream_admin.call("POST", "/api/v1/users", {"username": username, "password": password}, expect=201)
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    marker = f"typedinbrowser{uuid.uuid4().hex[:6]}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        refused: list[str] = []  # what the Content-Security-Policy blocked: the console needs nothing of it
        page.on(
            "console",
            lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None,
        )
        try:
            await page.goto(streams.b.url + "/")
            await page.fill("input[name=username]", username)
            await page.fill("input[name=password]", password)
            await page.click("#login button[type=submit]")
            await page.wait_for_selector(f"#templates option[value={DESKTOP_T}]", state="attached")
            await page.select_option("#templates", DESKTOP_T)
            await page.click("#create button[type=submit]")
            await page.wait_for_selector("[data-session-id][data-state=running]", timeout=30_000)
            await page.screenshot(path=str(ARTIFACTS / "console.png"))
            session_id = await page.get_attribute("[data-session-id]", "data-session-id")
            assert session_id
            await page.click("[data-session-id] button[data-action=open]")
            # a selector, not a JS predicate: the page's CSP forbids eval (docs/security.md)
            await page.wait_for_selector("#status:text-is('connected')", timeout=30_000)
            canvas = page.locator("#screen canvas")
            await canvas.click(position={"x": 200, "y": 150})  # into the xterm at +10+10
            await page.keyboard.type(f"touch {marker}", delay=30)
            await page.keyboard.press("Enter")
            typed = streams.sessions / session_id / "data" / marker

            async def appeared() -> bool:
                return typed.exists()

            await wait_until(appeared, timeout=15)
            await asyncio.sleep(0.5)  # the next frame shows the command line
            shot = ARTIFACTS / "viewer.png"
            await canvas.screenshot(path=str(shot))
            await drive_from_the_console(page, streams.b.url, session_id)
            assert refused == []
        finally:
            await page.screenshot(path=str(ARTIFACTS / "viewer-page.png"))
            await browser.close()
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 2, "the canvas screenshot is blank"
    print(f"screenshots: {ARTIFACTS}/viewer.png, console.png")


BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "streams.py"


@pytest.mark.timeout(240)
async def test_the_stream_benchmark_runs(tmp_path: Path) -> None:
    """bench/streams.py at tiny sizes: every path measured (never how fast)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH_SCRIPT),
        "--mib",
        "2",
        "--samples",
        "20",
        "--results",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate())[0].decode(errors="replace")
    assert process.returncode == 0, output
    (written,) = await asyncio.to_thread(lambda: list(tmp_path.glob("*-streams-*.json")))
    paths = json.loads(written.read_text())["paths"]
    assert set(paths) == {"direct TCP", "websockify", "ours (B -> agent on A)"}, output
    assert all(row["mib_per_s_each_way"] > 0 for row in paths.values()), paths


async def drive_from_the_console(page: Any, base: str, session_id: str) -> None:
    """Hibernate (the viewer then says the session is not running), wake and delete, with the console's buttons."""
    row = f"[data-session-id='{session_id}']"
    await page.goto(base + "/")
    await page.click(f"{row} button[data-action=hibernate]")
    await page.wait_for_selector(f"{row}[data-state=hibernated]", timeout=30_000)
    await page.goto(f"{base}/sessions/{session_id}/view")
    await page.wait_for_selector("#status:has-text('not running')")
    await page.goto(base + "/")
    await page.click(f"{row} button[data-action=wake]")
    await page.wait_for_selector(f"{row}[data-state=running]", timeout=30_000)
    await page.click(f"{row} button[data-action=delete]")
    await page.wait_for_selector(row, state="detached", timeout=30_000)
