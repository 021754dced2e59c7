"""Many simulated agents in one process, speaking the real frames (hello/welcome/command/ack/result).

Each agent is its own WebSocket, authenticated with its own agent token, and behaves on the wire like
streamspace-agent: hello announcing `confirm` and `inventory`, and one liveness frame an interval: an
unsolicited pong after an interval in which it sent nothing where the welcome names `pong_liveness` (no
pings; TCP_USER_TIMEOUT set, as the agent), else WebSocket pings and (unless the gateway counts pings,
`ping_liveness`) a heartbeat frame every heartbeat interval; --heartbeat-frames: as agents before both
features, a ping and a heartbeat frame every interval. And
(in `respond` mode) a `completed` result for every command at once (and no ack: the real agent
acknowledges a command by its result when that comes within its ACK_AFTER). It runs nothing and
keeps no journal: it is load, not an agent. `idle` mode only keeps the sockets open. With `--inventory`
it also announces INVENTORY_SESSIONS and answers it with an empty inventory (the dispatchers'
reconciliation then asks it every RECONCILE_INTERVAL, as a real agent); with `--fail-every N` every
Nth command of each agent is answered `failed` (an attempt row each).

    python bench/simagents.py AGENTS_JSON --mode respond|idle [--connect-concurrency 200] [--ping-interval 10]
        [--inventory] [--fail-every N] [--source 127.0.0.2] [--heartbeat-frames] [--without pong_liveness]

AGENTS_JSON holds `[[agent_id, token, gateway_url], ...]`. Once every agent has its welcome the
process prints one JSON line `{"connected": N, "seconds": S}` to stdout, then runs until killed.
It raises its own open-file limit to the hard one (one descriptor per socket). `--source` binds its
sockets to that local address: each (source, gateway address) pair has only the ephemeral port range
(~28,000 ports here), so 50,000 sockets to one gateway come from several loopback addresses 127.0.0.x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass

import aiohttp
import msgspec

from streamspace_common.liveness import take_pongs
from streamspace_common.schemas import (
    CONNECT_PATH,
    FEATURE_PING_LIVENESS,
    FEATURE_PONG_LIVENESS,
    FEATURES,
    Command,
    GatewayFrame,
    Heartbeat,
    Hello,
    Result,
    Welcome,
)

PING_RESULT: dict[str, object] = {"pong": True}
EMPTY_INVENTORY: dict[str, object] = {"sessions": [], "workloads": []}
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(GatewayFrame)
HEARTBEAT = _encoder.encode(Heartbeat()).decode()
HEARTBEAT_FRAMES_ENV = "SIM_HEARTBEAT_FRAMES"  # set (bench/run.py --heartbeat-frames): the earlier agents' frames
# comma-separated features the hello leaves out, e.g. "pong_liveness": agents of the previous release (ping + pong)
WITHOUT_FEATURES_ENV = "SIM_WITHOUT_FEATURES"


@dataclass(frozen=True)
class Behaviour:
    respond: bool  # answer every command at once (respond mode); else only keep the socket
    ping_interval: float
    features: list[str]  # the hello's features (without ping_ and pong_liveness: the earlier agents' heartbeats)
    inventory: bool = False  # announce INVENTORY_SESSIONS, answer it with an empty inventory
    fail_every: int = 0  # answer every Nth command `failed` (0: none)


class SimAgent:
    def __init__(self, agent_id: str, token: str, gateway_url: str, behaviour: Behaviour) -> None:
        self.agent_id = agent_id
        self.token = token
        self.url = gateway_url.rstrip("/").replace("http://", "ws://", 1) + CONNECT_PATH
        self.respond = behaviour.respond
        self.ping_interval = behaviour.ping_interval
        self.behaviour = behaviour
        self.capabilities = ["PING", "INVENTORY_SESSIONS"] if behaviour.inventory else ["PING"]
        self.answered = 0
        self.welcomed = asyncio.Event()

    async def run(self, http: aiohttp.ClientSession, ready: asyncio.Semaphore) -> None:
        """Connect (again after any failure, as an agent would) and serve the socket."""
        while True:
            try:
                async with ready:
                    # Pings at the agent's own HEARTBEAT_INTERVAL, as streamspace-agent does.
                    ws = await http.ws_connect(
                        self.url, headers={"Authorization": f"Bearer {self.token}"}, heartbeat=self.ping_interval
                    )
                    hello = Hello(
                        agent_id=self.agent_id,
                        platform="sim",
                        version="bench",
                        instance_id=uuid.uuid4().hex,
                        capabilities=self.capabilities,
                        features=self.behaviour.features,
                    )
                    await ws.send_str(_encoder.encode(hello).decode())
                    message = await ws.receive(timeout=60)
                    welcome = _decoder.decode(message.data)
                    if not isinstance(welcome, Welcome):
                        raise RuntimeError(f"expected welcome, got {message!r}")
                self.welcomed.set()
                await self.serve(ws, welcome.heartbeat_interval, welcome.features)
            except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError, msgspec.DecodeError) as exc:
                print(f"{self.agent_id}: {exc!r}", file=sys.stderr)
            await asyncio.sleep(1.0)

    async def serve(self, ws: aiohttp.ClientWebSocketResponse, heartbeat_interval: float, features: list[str]) -> None:
        # As streamspace-agent: an idle socket's pong (or else its ping, where the gateway counts it) is its
        # one liveness frame an interval
        pongs = None
        if FEATURE_PONG_LIVENESS in features:
            pongs = take_pongs(ws, self.ping_interval, heartbeat_interval)
            beats: asyncio.Task[None] | None = asyncio.create_task(pongs.run())
        elif FEATURE_PING_LIVENESS in features:
            beats = None
        else:
            beats = asyncio.create_task(self.heartbeats(ws, heartbeat_interval))
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = _decoder.decode(message.data)
                if isinstance(frame, Command) and self.respond:
                    await ws.send_str(_encoder.encode(self.answer(frame)).decode())
                    if pongs is not None:
                        pongs.sent()
                # Confirm frames: nothing to forget, the simulated agent keeps no journal.
        finally:
            if beats is not None:
                beats.cancel()
            await ws.close()

    def answer(self, command: Command) -> Result:
        self.answered += 1
        every = self.behaviour.fail_every
        if command.action == "INVENTORY_SESSIONS":
            return Result(command_id=command.command_id, status="completed", result=EMPTY_INVENTORY)
        if every and self.answered % every == 0:
            return Result(command_id=command.command_id, status="failed", error="simulated failure")
        return Result(command_id=command.command_id, status="completed", result=PING_RESULT)

    @staticmethod
    async def heartbeats(ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        while not ws.closed:
            await asyncio.sleep(interval)
            await ws.send_str(HEARTBEAT)


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main_async(
    specs: list[list[str]], behaviour: Behaviour, connect_concurrency: int, source: str | None = None
) -> None:
    agents = [SimAgent(agent_id, token, url, behaviour) for agent_id, token, url in specs]
    connector = aiohttp.TCPConnector(limit=0, local_addr=(source, 0) if source else None)
    async with aiohttp.ClientSession(connector=connector) as http:
        ready = asyncio.Semaphore(connect_concurrency)
        started = time.perf_counter()
        tasks = [asyncio.create_task(agent.run(http, ready)) for agent in agents]
        await asyncio.gather(*(agent.welcomed.wait() for agent in agents))
        seconds = time.perf_counter() - started
        print(json.dumps({"connected": len(agents), "seconds": seconds}), flush=True)
        await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("agents_file")
    parser.add_argument("--mode", choices=("respond", "idle"), required=True)
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument("--ping-interval", type=float, default=10.0, help="the agents' HEARTBEAT_INTERVAL")
    parser.add_argument("--source", help="local address to connect from (a loopback address 127.0.0.x)")
    parser.add_argument(
        "--heartbeat-frames",
        action="store_true",
        default=bool(os.environ.get(HEARTBEAT_FRAMES_ENV)),
        help=f"as agents before ping_/pong_liveness: ping + heartbeat frame (default: ${HEARTBEAT_FRAMES_ENV})",
    )
    parser.add_argument(
        "--without",
        default=os.environ.get(WITHOUT_FEATURES_ENV, ""),
        help=f"comma-separated features the hello leaves out (default: ${WITHOUT_FEATURES_ENV})",
    )
    parser.add_argument("--inventory", action="store_true", help="announce and answer INVENTORY_SESSIONS")
    parser.add_argument("--fail-every", type=int, default=0, help="answer every Nth command failed (0: never)")
    args = parser.parse_args()
    raise_open_files_limit()
    with open(args.agents_file) as f:
        specs = json.load(f)
    left_out = {
        *args.without.split(","),
        *((FEATURE_PING_LIVENESS, FEATURE_PONG_LIVENESS) if args.heartbeat_frames else ()),
    }
    features = [f for f in FEATURES if f not in left_out]
    behaviour = Behaviour(args.mode == "respond", args.ping_interval, features, args.inventory, args.fail_every)
    asyncio.run(main_async(specs, behaviour, args.connect_concurrency, args.source))


if __name__ == "__main__":
    main()
