"""A vanished gateway host found without any answer to wait for (issue 27, `pong_liveness`).

With `pong_liveness` the agent sends unsolicited pongs and no pings, so nothing comes back on an idle
socket. It sets TCP_USER_TIMEOUT (3 intervals) instead: its pongs left unacknowledged that long end the
connection. A userspace proxy cannot show this (its own kernel acknowledges), nor can SIGSTOP (the
gateway's kernel does): the agent runs in a network namespace of its own, joined to the host by a veth
pair, and taking the host's end of the pair down drops every packet between them, without a close or
a reset, as a gateway host that lost power would. Needs root (`ip netns`); skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import msgspec
import pytest
from aiohttp import WSMsgType, web

from streamspace_common.schemas import CONNECT_PATH, FEATURE_PONG_LIVENESS, AgentFrame, Hello, Welcome
from streamspace_testkit import Service, Stack, free_port, spawn, wait_until

INTERVAL = 1.0  # seconds: the agent's and the scripted gateway's heartbeat interval
# The last pong before the cut may have gone out an interval ago, then 3 intervals of retransmissions;
# without TCP_USER_TIMEOUT the kernel retransmits for ~15 minutes (tcp_retries2).
FOUND_WITHIN = INTERVAL + 3 * INTERVAL + 3.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A network namespace with a veth pair to the host: (namespace, host-side link, host-side address)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns, veth)")
    tag = f"{os.getpid() % 100000}"
    namespace, host_link, inner_link = f"pong{tag}", f"pg{tag}h", f"pg{tag}n"
    subnet = f"10.231.{os.getpid() % 250}"
    ip("netns", "add", namespace)
    try:
        ip("link", "add", host_link, "type", "veth", "peer", "name", inner_link, "netns", namespace)
        ip("addr", "add", f"{subnet}.1/30", "dev", host_link)
        ip("link", "set", host_link, "up")
        ip("-n", namespace, "addr", "add", f"{subnet}.2/30", "dev", inner_link)
        ip("-n", namespace, "link", "set", inner_link, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        yield namespace, host_link, f"{subnet}.1"
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)  # and the pair


class PongGateway:
    """Welcomes with pong_liveness, answers nothing, counts the pongs."""

    def __init__(self) -> None:
        self.pongs = 0
        self.sockets: set[web.WebSocketResponse] = set()

    async def connect(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.sockets.add(ws)
        hello = msgspec.json.decode((await ws.receive()).data, type=AgentFrame)
        assert isinstance(hello, Hello) and FEATURE_PONG_LIVENESS in hello.features
        welcome = Welcome(pod="scripted", heartbeat_interval=INTERVAL, features=[FEATURE_PONG_LIVENESS])
        await ws.send_str(msgspec.json.encode(welcome).decode())
        async for message in ws:
            self.pongs += message.type == WSMsgType.PONG
        return ws

    async def close_sockets(self, app: web.Application) -> None:
        for ws in list(self.sockets):
            await ws.close(code=1012)


async def test_the_agent_finds_a_gateway_that_stops_acknowledging(stack: Stack, netns: tuple[str, str, str]) -> None:
    namespace, host_link, address = netns
    gateway = PongGateway()
    app = web.Application()
    app.router.add_get(CONNECT_PATH, gateway.connect)
    app.on_shutdown.append(gateway.close_sockets)
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, address, port).start()
    settings = {
        "PORT": str(free_port()),
        "AGENT_ID": "agent-tcp-liveness",
        "AGENT_TOKEN": "not-checked",
        "AGENT_STATE_DIR": str(stack.log_dir / "agent-tcp-liveness-state"),
        "HEARTBEAT_INTERVAL": str(INTERVAL),
        "GATEWAY_URLS": f"http://{address}:{port}",
    }
    log_path = stack.log_dir / "agent-tcp-liveness.log"
    env = {**os.environ, **stack.env.service_env(), **settings}
    with log_path.open("wb") as log_file:
        process = spawn(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "streamspace_agent"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    agent = Service("agent-tcp-liveness", process, int(settings["PORT"]), log_path)
    stack.services.append(agent)  # killed and its log shown after the test
    disconnected = re.compile(r"\bdisconnected\b")
    try:
        await wait_until(lambda: gateway.pongs >= 2, timeout=30, what="the agent's pongs")
        assert not disconnected.search(agent.log())
        ip("link", "set", host_link, "down")  # every packet between them dropped; nobody closes anything
        cut = time.monotonic()
        await wait_until(lambda: bool(disconnected.search(agent.log())), timeout=60, what="the agent's disconnect")
        found = time.monotonic() - cut
        assert found <= FOUND_WITHIN, f"found after {found:.1f} s\n{agent.log()[-3000:]}"
        assert all(not ws.closed for ws in gateway.sockets)  # the agent found it alone: the gateway closed nothing
    finally:
        await runner.cleanup()
