"""streamspace-dev: the whole stack in one terminal.

Applies migrations (creating the database if needed), registers the dev agent's token, then runs
two gateway replicas, a dispatcher and a `local` agent against the configured PostgreSQL, Redis and
RabbitMQ, each line of output prefixed with its process name. Ctrl-C (or SIGTERM) stops them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass

from streamspace_common.log import configure_logging
from streamspace_common.settings import load_settings

from .admin import create_agent_token
from .migrate import create_database_if_missing, migrate
from .settings import DevSettings

DEV_AGENT_ID = "local-agent"
DEV_AGENT_TOKEN = "streamspace-dev-agent-token"  # noqa: S105 (dev only: registered in the dev database alone)


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]


def children(
    gateway_ports: list[int], dispatcher_port: int, agent_port: int, token: str, metrics_ports: list[int] | None = None
) -> list[Child]:
    """The processes; a gateway's /metrics is on its METRICS_PORT (default: its port + 1000), not its API port."""
    scraped = metrics_ports or [port + 1000 for port in gateway_ports]
    gateways = [
        Child(f"gateway-{chr(ord('a') + i)}", "streamspace_gateway", {"PORT": str(port), "METRICS_PORT": str(metrics)})
        for i, (port, metrics) in enumerate(zip(gateway_ports, scraped, strict=True))
    ]
    for gateway in gateways:
        gateway.env["POD_NAME"] = gateway.name
    urls = ",".join(f"http://127.0.0.1:{port}" for port in gateway_ports)
    return [
        *gateways,
        Child("dispatcher", "streamspace_dispatcher", {"PORT": str(dispatcher_port), "POD_NAME": "dispatcher-1"}),
        Child(
            "agent",
            "streamspace_agent",
            {"PORT": str(agent_port), "AGENT_ID": DEV_AGENT_ID, "AGENT_TOKEN": token, "GATEWAY_URLS": urls},
        ),
    ]


async def pipe_output(child: Child, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.write(f"{child.name:<10} | {line.decode(errors='replace')}")
        sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(DevSettings)
    await create_database_if_missing(settings.database_url)
    await migrate(settings.database_url)
    token = await create_agent_token(settings.database_url, DEV_AGENT_ID, settings.agent_token or DEV_AGENT_TOKEN)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    processes: list[asyncio.subprocess.Process] = []
    pipes: list[asyncio.Task[None]] = []
    for child in children(args.gateway_ports, args.dispatcher_port, args.agent_port, token, args.metrics_ports):
        env = {**os.environ, "LOG_FORMAT": settings.log_format, **child.env}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            child.module,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        if process.stdout is None:  # never: stdout=PIPE above
            raise RuntimeError(f"{child.name}: no stdout pipe")
        processes.append(process)
        pipes.append(asyncio.create_task(pipe_output(child, process.stdout)))

    exited = [asyncio.create_task(process.wait()) for process in processes]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *exited], return_when=asyncio.FIRST_COMPLETED)
    code = 0 if stop.is_set() else 1
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*exited), timeout=15)
    except TimeoutError:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    await asyncio.gather(*pipes, return_exceptions=True)
    stopper.cancel()
    return code


def main() -> None:
    parser = argparse.ArgumentParser(prog="streamspace-dev", description=__doc__)
    parser.add_argument("--gateway-ports", type=lambda v: [int(p) for p in v.split(",")], default=[8000, 8001])
    parser.add_argument(
        "--metrics-ports",
        type=lambda v: [int(p) for p in v.split(",")],
        default=None,
        help="default: gateway ports + 1000",
    )
    parser.add_argument("--dispatcher-port", type=int, default=8090)
    parser.add_argument("--agent-port", type=int, default=8091)
    args = parser.parse_args()
    settings = load_settings(DevSettings)
    configure_logging(settings.log_format, settings.log_level, service="dev")
    sys.exit(asyncio.run(run(args)))
