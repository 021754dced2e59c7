"""What one gateway needs to hold many agent sockets: its open-file limit, and lean sockets (issue 27)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import msgspec

from streamspace_common.schemas import CONNECT_PATH, FEATURES, GatewayFrame, Hello, Welcome
from streamspace_gateway.main import OPEN_FILES_NEEDED
from streamspace_testkit import RunEnv, Service, Stack, free_port
from streamspace_tools.admin import create_agent_token

LOW_SOFT, LOW_HARD = 256, 4096  # a hard limit below what 50,000 sockets need: the gateway must warn


def limited_to(soft: int, hard: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_limited_gateway(stack: Stack, test_env: RunEnv, pod: str) -> Service:
    """A gateway process started with a soft file limit of 256 under a hard one of 4,096 (JSON logs)."""
    port = free_port()
    env = {**os.environ, **test_env.service_env(), "PORT": str(port), "POD_NAME": pod, "LOG_FORMAT": "json"}
    log_path = stack.log_dir / f"{pod}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamspace_gateway"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: limited_to(LOW_SOFT, LOW_HARD),  # only setrlimit, before exec
            start_new_session=True,  # a group of its own, as the kit's stack kills groups
        )
    service = Service(pod, process, port, log_path)
    stack.services.append(service)
    return service


def open_files_soft_limit(pid: int) -> int:
    line = next(row for row in Path(f"/proc/{pid}/limits").read_text().splitlines() if "Max open files" in row)
    return int(line.split()[3])


def events(service: Service) -> dict[str, dict[str, object]]:
    logged = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    return {entry["event"]: entry for entry in logged}


async def test_the_gateway_raises_its_open_file_limit_to_the_hard_one_and_warns_below_the_need(
    stack: Stack, test_env: RunEnv
) -> None:
    gateway = start_limited_gateway(stack, test_env, "gateway-files")
    await stack.ready(gateway)
    assert open_files_soft_limit(gateway.process.pid) == LOW_HARD
    logged = events(gateway)
    assert logged["open_files_limit"]["soft"] == LOW_HARD
    assert logged["open_files_limit"]["hard"] == LOW_HARD
    low = logged["open_files_limit_low"]
    assert low["level"] == "warning"
    assert low["needed"] == OPEN_FILES_NEEDED
    assert low["agent_sockets_at_most"] == LOW_HARD - 1_024


async def test_an_agent_socket_declines_permessage_deflate_and_works_without_it(stack: Stack, test_env: RunEnv) -> None:
    """Every agent offers compression (aiohttp's default); the gateway declines it (no zlib state per socket,
    no deflate or inflate per frame). The agent gets its welcome all the same."""
    gateway = stack.gateway("gateway-plain")
    await stack.ready(gateway)
    agent_id = f"plain-{uuid.uuid4().hex[:8]}"
    token = await create_agent_token(test_env.database_url, agent_id)
    url = gateway.url.replace("http://", "ws://") + CONNECT_PATH
    instance = uuid.uuid4().hex
    hello = Hello(agent_id=agent_id, platform="test", version="t", instance_id=instance, features=list(FEATURES))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}, compress=15) as ws,
    ):
        assert ws.compress == 0  # the handshake's answer carried no permessage-deflate
        await ws.send_str(msgspec.json.encode(hello).decode())
        message = await ws.receive(timeout=30)
        assert isinstance(msgspec.json.decode(message.data, type=GatewayFrame), Welcome)
