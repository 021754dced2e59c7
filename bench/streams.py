"""Stream throughput and added round-trip latency (issue 16): ours vs a direct TCP connection vs websockify.

Starts gateways A and B, a dispatcher and a local agent connected to A only (production settings),
creates a byte-echo session (`streamspace_agent.byte_echo`: a TCP server sending back what it reads),
and measures three paths to the same session endpoint, in the same run:

- direct: a TCP connection to the session's endpoint (no WebSocket at all: the floor);
- websockify: the standard VNC WebSocket bridge (websockify from PyPI) on this machine, in front of it;
- ours: the browser stream on gateway B, through the agent's dial-back tunnel (agent on A).

Throughput: `--mib` MiB of random bytes written while the echo is read back (each way at once), MiB/s.
Connect: from asking for a stream to its first echoed byte, the path's first stream (cold: pools,
caches and prepared plans still empty) and the p50 of `--connects` streams opened after it.
Latency: `--samples` round trips of a 32-byte message, one at a time: p50 / p99, and what the path adds
over direct TCP. CPU: the CPU-seconds the path's own processes (websockify and its children; ours:
gateway B and the agent, each also given alone) used during the throughput run, per GiB moved (both
ways counted): stable under a loaded machine where MiB/s is not. Writes
bench/results/<UTC time>-streams-<mib>mib.json (a summary: percentiles of the round trips). bench/run.py
folds these rows into its table (its `streams` section).

    .venv/bin/python bench/streams.py [--mib 50] [--samples 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import psutil
from figures import percentile, results_path, write_results

from streamspace_testkit import Stack, drop_database, new_account, new_test_env, rabbitmqctl, wait_until
from streamspace_tools.admin import create_agent_token
from streamspace_tools.migrate import create_database_if_missing, migrate

PRODUCTION = {"HEARTBEAT_INTERVAL": "10", "SWEEP_INTERVAL": "5", "ACK_TIMEOUT": "10", "LOG_LEVEL": "warning"}
BYTE_ECHO = ["{python}", "-m", "streamspace_agent.byte_echo", "--port", "{port}"]
CHUNK = 64 * 1024
CONNECTS = 20  # streams opened again on each path after its first, for the connect p50


class Link(Protocol):
    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    async def close(self) -> None: ...


class TcpLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self) -> bytes:
        data = await self.reader.read(CHUNK)
        if not data:
            raise ConnectionError("closed")
        return data

    async def close(self) -> None:
        self.writer.close()


class WsLink:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def receive(self) -> bytes:
        message = await self.ws.receive()
        if message.type != aiohttp.WSMsgType.BINARY:
            raise ConnectionError(f"closed: {message}")
        return bytes(message.data)

    async def close(self) -> None:
        await self.ws.close()


async def throughput(link: Link, mib: int) -> float:
    payload = os.urandom(mib * 1024 * 1024)

    async def send() -> None:
        for offset in range(0, len(payload), CHUNK):
            await link.send(payload[offset : offset + CHUNK])

    async def receive() -> None:
        count = 0
        while count < len(payload):
            count += len(await link.receive())

    started = time.perf_counter()
    await asyncio.gather(send(), receive())
    return mib / (time.perf_counter() - started)


async def round_trips(link: Link, samples: int) -> list[float]:
    message = b"x" * 32
    times = []
    for index in range(samples + 50):
        started = time.perf_counter()
        await link.send(message)
        got = b""
        while len(got) < len(message):
            got += await link.receive()
        if index >= 50:  # warm-up
            times.append(time.perf_counter() - started)
    return times


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    env = new_test_env()
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    rabbitmqctl("add_vhost", env.vhost)
    rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    results: dict[str, Any] = {"machine_cores": os.cpu_count(), "mib": args.mib, "samples": args.samples, "paths": {}}
    bridge: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory() as work:
            stack = Stack(env, Path(work))
            try:
                a = stack.gateway("gateway-a", SESSION_QUOTA="100", **PRODUCTION)
                b = stack.gateway("gateway-b", SESSION_QUOTA="100", **PRODUCTION)
                dispatcher = stack.dispatcher(**PRODUCTION)
                await stack.ready(a, b, dispatcher)
                token = await create_agent_token(env.database_url, "bench-stream-agent")
                sessions_dir = str(Path(work) / "sessions")
                # GATEWAY_URLS names both (the agent dials tunnels back only to gateways it is configured
                # for); it connects to the first, A, so every stream opened on B crosses replicas
                agent = stack.agent("bench-stream-agent", token, [a, b], LOCAL_SESSION_DIR=sessions_dir, **PRODUCTION)
                await stack.ready(agent)
                admin = await new_account(env.database_url, f"bench-admin-{uuid.uuid4().hex[:4]}", admin=True)
                async with aiohttp.ClientSession(headers=admin.headers) as http:
                    template = {"name": "byte-echo", "command": BYTE_ECHO, "platforms": ["local"]}
                    async with http.post(f"{a.url}/api/v1/templates", json=template) as response:
                        assert response.status == 201, await response.text()
                    session = await create_running(http, a.url)
                    host, port = session["endpoint"]["host"], session["endpoint"]["port"]
                    bridge_port = free_port()
                    bridge = start_websockify(bridge_port, host, port)
                    await wait_until(lambda: listening(bridge_port), timeout=15)

                    # ours' connects: the ticket, the upgrade, the rest (tunnel, echo); the p50 of each
                    setup: dict[str, list[float]] = {"ticket_ms": [], "upgrade_ms": []}
                    cpu_of = {
                        "direct TCP": {},
                        "websockify": {"websockify": bridge.pid},
                        "ours (B -> agent on A)": {"gateway B": b.process.pid, "agent": agent.process.pid},
                    }

                    async def direct() -> Link:
                        return TcpLink(*await asyncio.open_connection(host, port))

                    async def via_websockify() -> Link:
                        url = f"ws://127.0.0.1:{bridge_port}/"
                        return WsLink(await http.ws_connect(url, protocols=("binary",), max_msg_size=0))

                    async def ours() -> Link:
                        started = time.perf_counter()
                        ticket_url = f"{b.url}/api/v1/sessions/{session['id']}/stream-ticket"
                        async with http.post(ticket_url) as response:
                            ticket = await response.json()
                        ticketed = time.perf_counter()
                        url = f"ws://127.0.0.1:{b.port}{ticket['url']}"
                        link = WsLink(await http.ws_connect(url, protocols=("binary",), max_msg_size=0))
                        setup["ticket_ms"].append(ticketed - started)
                        setup["upgrade_ms"].append(time.perf_counter() - ticketed)
                        return link

                    for name, opener in (
                        ("direct TCP", direct),
                        ("websockify", via_websockify),
                        ("ours (B -> agent on A)", ours),
                    ):
                        results["paths"][name] = await measure_path(opener, args, cpu_of[name])
                        if opener is ours:
                            results["paths"][name].update({k: percentile(v, 0.5) * 1000 for k, v in setup.items()})
                        print_path(name, results["paths"][name], results["paths"].get("direct TCP"))
            finally:
                if bridge is not None:
                    bridge.kill()
                    bridge.wait()
                stack.stop_all()
                kill_sessions(Path(work) / "sessions")
    finally:
        rabbitmqctl("delete_vhost", env.vhost)
        await drop_database(env.database_url)
    return results


def kill_sessions(sessions: Path) -> None:
    """Session processes run in their own process groups and outlive the killed agent: end them too."""
    for state in sessions.glob("*/session.json"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGKILL)


def start_websockify(port: int, host: str, target: int) -> subprocess.Popen[bytes]:
    websockify = Path(sys.executable).parent / "websockify"
    argv = [str(websockify), f"127.0.0.1:{port}", f"{host}:{target}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def create_running(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.post(f"{url}/api/v1/sessions", json={"template": "byte-echo"}) as response:
        session = await response.json()
        assert response.status == 202, session

    async def running() -> dict[str, Any] | None:
        async with http.get(f"{url}/api/v1/sessions/{session['id']}") as response:
            now: dict[str, Any] = await response.json()
        return now if now["state"] == "running" else None

    return await wait_until(running, timeout=60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (websockify forks one per connection)."""
    try:
        process = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0.0


def perf_record(directory: Path, name: str, pid: int) -> subprocess.Popen[bytes]:
    """`perf record` of one process (and its threads) during the throughput run: where its CPU goes,
    kernel included (`perf report -i DIR/NAME.data --sort dso,sym`)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name.replace(' ', '-')}.data"
    argv = ["perf", "record", "-q", "-F", "499", "-p", str(pid), "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def connect_to_first_echo(opener: Any) -> tuple[Link, float]:
    """A new link, and the seconds from asking for it to the first byte echoed through it."""
    started = time.perf_counter()
    link = await opener()
    await link.send(b"!")
    await link.receive()
    return link, time.perf_counter() - started


async def measure_path(opener: Any, args: argparse.Namespace, processes: dict[str, int]) -> dict[str, Any]:
    link, first_connect = await connect_to_first_echo(opener)
    try:
        before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        recorders = [perf_record(args.perf, name, pid) for name, pid in processes.items()] if args.perf else []
        rate = await throughput(link, args.mib)
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
        gib_moved = 2 * args.mib / 1024
        cpu = {name: (cpu_seconds(pid) - before[name]) / gib_moved for name, pid in processes.items()}
        rtts = await round_trips(link, args.samples)
    finally:
        await link.close()
    connects = []  # each a new stream opened, echoed once and closed, as a viewer opened again would
    for _ in range(args.connects):
        link, seconds = await connect_to_first_echo(opener)
        connects.append(seconds)
        await link.close()
    return {
        "connect_first_ms": first_connect * 1000,  # the path's first stream: cold caches, pools, prepared plans
        "connect_p50_ms": percentile(connects, 0.5) * 1000 if connects else first_connect * 1000,
        "connect_p90_ms": percentile(connects, 0.9) * 1000 if connects else first_connect * 1000,
        "connects": len(connects),
        "mib_per_s_each_way": rate,
        "rtt_p50_ms": percentile(rtts, 0.5) * 1000,
        "rtt_p99_ms": percentile(rtts, 0.99) * 1000,
        "cpu_seconds_per_gib": {**cpu, "total": sum(cpu.values())},
        "load_average_1m": os.getloadavg()[0],
    }


def print_path(name: str, row: dict[str, Any], direct: dict[str, Any] | None) -> None:
    added = "" if direct is None or row is direct else f"  (+{row['rtt_p50_ms'] - direct['rtt_p50_ms']:.3f} ms p50)"
    print(
        f"{name:24} {row['mib_per_s_each_way']:7.1f} MiB/s each way   rtt p50 {row['rtt_p50_ms']:.3f} ms"
        f"  p99 {row['rtt_p99_ms']:.3f} ms{added}   connect p50 {row['connect_p50_ms']:.1f} ms"
        f" (first {row['connect_first_ms']:.1f})"
        f"   cpu-s/GiB {row['cpu_seconds_per_gib']['total']:.2f}   load {row['load_average_1m']:.1f}"
    )
    if "ticket_ms" in row:
        print(
            f"{'':24} connect p50: ticket {row['ticket_ms']:.1f} ms, upgrade {row['upgrade_ms']:.1f} ms, the rest after"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--connects", type=int, default=CONNECTS, help="streams opened after the first (connect p50)")
    parser.add_argument("--perf", type=Path, help="a directory for `perf record` files of each path's processes")
    parser.add_argument("--results", type=Path, help="directory of the JSON summary (default bench/results)")
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    path = results_path("streams", f"{args.mib}mib")
    print(f"written {write_results(args.results / path.name if args.results else path, results)}")


if __name__ == "__main__":
    main()
