"""Sessions isolated from each other (docs/security.md, "## Session isolation").

- kubernetes: against the FAKE Kubernetes API (streamspace_testkit.fake_kubernetes; no cluster runs
  here): the objects the driver creates. Whether a CNI enforces the NetworkPolicy is for a real cluster.
- docker: the create configuration the driver builds, read without an engine (the machine's engine is
  shared; tests/e2e/test_drivers_docker.py checks the same on a real engine).
- local: real processes: a session listening beyond 127.0.0.1 is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamspace_agent.drivers.docker import DockerDriver
from streamspace_agent.drivers.kubernetes import KubernetesDriver
from streamspace_agent.drivers.local import LocalDriver, proc_stat
from streamspace_agent.drivers.settings import DockerSettings, KubernetesSettings, LocalSettings
from streamspace_common.actions import CreateSession, Resources
from streamspace_common.schemas import Command
from streamspace_testkit import serve_locally
from streamspace_testkit.fake_kubernetes import FakeKubernetes
from unit.test_deploy_static import only, render

NAMESPACE = "sessions"
AGENT = "iso-agent"
CHART_AGENT_SELECTOR = "app.kubernetes.io/name=streamspace-agent,app.kubernetes.io/instance=edge"


def new_session_id() -> str:
    return f"s-{uuid.uuid4()}"


def create_command(session_id: str, **spec: Any) -> Command:
    payload = {"session_id": session_id, "name": "desktop", "image": "streamspace/desktop:dev", "ports": [5900]}
    return Command(command_id=f"cmd-{uuid.uuid4().hex}", action="CREATE_SESSION", payload={**payload, **spec})


# --- kubernetes --------------------------------------------------------------------------------


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[FakeKubernetes, str]]:
    server = FakeKubernetes()
    runner, port = await serve_locally(server.app)
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def kubernetes_driver(url: str, selector: str = CHART_AGENT_SELECTOR) -> KubernetesDriver:
    settings = KubernetesSettings(
        agent_id=AGENT,
        agent_platform="kubernetes",
        kubernetes_namespace=NAMESPACE,
        kubernetes_api_url=url,
        kubernetes_agent_selector=selector,
    )
    return KubernetesDriver(settings)


def created(api: FakeKubernetes, resource: str) -> dict[str, Any]:
    [body] = [r.body for r in api.requests if r.method == "POST" and r.path.endswith(f"/{resource}")]
    assert isinstance(body, dict)
    return body


async def test_kubernetes_session_pods_run_restricted_without_a_token(
    fake_api: tuple[FakeKubernetes, str],
) -> None:
    """A session escaping its container: no root, no escalation, no capabilities, seccomp on, and no
    service-account token to call the Kubernetes API with (the restricted Pod Security Standard)."""
    api, url = fake_api
    driver = kubernetes_driver(url)
    try:
        report = await driver.execute(create_command(new_session_id()))
    finally:
        await driver.close()
    assert report["state"] == "running"
    pod = created(api, "deployments")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["privileged"] is False
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


async def test_kubernetes_session_admits_only_the_agents_pods(fake_api: tuple[FakeKubernetes, str]) -> None:
    """Any pod (another session, a gateway, anything in the cluster) dialling a session's VNC port
    without a ticket: each session's NetworkPolicy admits the agent's pods alone, on the template's
    ports alone, and exists before the session's Deployment does."""
    api, url = fake_api
    driver = kubernetes_driver(url)
    session_id = new_session_id()
    try:
        await driver.execute(create_command(session_id, ports=[5900, 8080]))
    finally:
        await driver.close()
    kinds = [r.path.rsplit("/", 1)[1] for r in api.requests if r.method == "POST"]
    assert kinds.index("networkpolicies") < kinds.index("deployments")

    policy = created(api, "networkpolicies")
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    deployment = created(api, "deployments")
    session_pods = deployment["spec"]["template"]["metadata"]["labels"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= session_pods.items() and selected["io.streamspace.session_id"] == session_id
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5900}, {"protocol": "TCP", "port": 8080}]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "streamspace-agent", "app.kubernetes.io/instance": "edge"}
            }
        }
    ]
    # another session's pods are not among those admitted
    other = {**session_pods, "io.streamspace.session_id": "someone-else"}
    assert not rule["from"][0]["podSelector"]["matchLabels"].items() <= other.items()


async def test_kubernetes_policy_admits_the_agent_pods_the_chart_makes_and_no_gateway(
    fake_api: tuple[FakeKubernetes, str],
) -> None:
    """The selector the agent chart hands the driver matches the chart's agent pods, and not the
    gateway chart's pods (a gateway never dials a session: the agent does)."""
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
    api, url = fake_api
    values = {"agent": {"id": AGENT, "platform": "kubernetes", "gatewayUrls": "http://g:8000"}}
    agent_docs = render(helm, "streamspace-agent", {**values, "agentToken": {"value": "t"}})
    agent_deployment = only(agent_docs, "Deployment")
    [agent_container] = agent_deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in agent_container["env"]}
    driver = kubernetes_driver(url, env["KUBERNETES_AGENT_SELECTOR"])
    try:
        await driver.execute(create_command(new_session_id()))
    finally:
        await driver.close()
    admitted = created(api, "networkpolicies")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert admitted.items() <= agent_deployment["spec"]["template"]["metadata"]["labels"].items()
    gateway_pods = only(render(helm, "streamspace-gateway"), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not admitted.items() <= gateway_pods.items()


async def test_kubernetes_agent_in_another_namespace_is_named_by_namespace(
    fake_api: tuple[FakeKubernetes, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions in a namespace of their own: the policy admits the agent's pods of the agent's
    namespace, not pods with the same labels in the sessions' namespace."""
    api, url = fake_api
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("agents\n")
    monkeypatch.setattr("streamspace_agent.drivers.kubernetes.POD_NAMESPACE_FILE", namespace_file)
    driver = kubernetes_driver(url)
    try:
        await driver.execute(create_command(new_session_id()))
    finally:
        await driver.close()
    [peer] = created(api, "networkpolicies")["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "agents"}}
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "streamspace-agent"


def test_kubernetes_agent_refuses_to_start_without_the_agent_selector() -> None:
    """No selector, no policy that could admit the agent: the driver refuses rather than run sessions open."""
    with pytest.raises(ValueError, match="KUBERNETES_AGENT_SELECTOR"):
        KubernetesDriver(
            KubernetesSettings(agent_id=AGENT, agent_platform="kubernetes", kubernetes_namespace=NAMESPACE)
        )


# --- docker ------------------------------------------------------------------------------------


def docker_spec(session_id: str) -> CreateSession:
    return CreateSession(
        session_id=session_id,
        name="desktop",
        image="streamspace/desktop:dev",
        ports=[5900, 6080],
        resources=Resources(),
    )


def test_docker_sessions_drop_capabilities_and_privileges() -> None:
    """A session escaping its container: every capability dropped but the few a desktop's entrypoint
    needs to hand /data to its user, and no setuid binary gains anything (no-new-privileges)."""
    driver = DockerDriver(DockerSettings(agent_id=AGENT, agent_platform="docker"))
    host = driver.specs.container(docker_spec(new_session_id()))["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert host["CapAdd"] == ["CHOWN", "SETUID", "SETGID"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Privileged"] is False

    bare = DockerDriver(DockerSettings(agent_id=AGENT, agent_platform="docker", docker_cap_add=""))
    assert bare.specs.container(docker_spec(new_session_id()))["HostConfig"]["CapAdd"] == []
    for bad in ("ALL", "SYS_ADMIN;rm", "net admin"):
        with pytest.raises(ValueError, match="DOCKER_CAP_ADD"):
            DockerDriver(DockerSettings(agent_id=AGENT, agent_platform="docker", docker_cap_add=bad))


def test_docker_sessions_sit_on_their_own_network_and_cannot_reach_each_other() -> None:
    """One session dialling another's VNC port over the engine's network: sessions are on a bridge of
    their own with inter-container traffic off, and only the first port is published, on 127.0.0.1."""
    driver = DockerDriver(DockerSettings(agent_id=AGENT, agent_platform="docker", docker_network="ss-net"))
    assert driver.specs.network_config() == {
        "Name": "ss-net",
        "Driver": "bridge",
        "Labels": {"io.streamspace.managed": "true"},
        "Options": {"com.docker.network.bridge.enable_icc": "false"},
    }
    config = driver.specs.container(docker_spec(new_session_id()))
    assert config["HostConfig"]["NetworkMode"] == "ss-net"
    assert config["HostConfig"]["PortBindings"] == {"5900/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    for engine_network in ("bridge", "host", "none", "default"):
        with pytest.raises(ValueError, match="DOCKER_NETWORK"):
            DockerDriver(DockerSettings(agent_id=AGENT, agent_platform="docker", docker_network=engine_network))


# --- local -------------------------------------------------------------------------------------


ECHO_ON = ["{python}", "-m", "streamspace_agent.echo_app", "--port", "{port}", "--host"]
HTTP_SERVER_ON = ["{python}", "-m", "http.server", "{port}", "--bind"]  # IPv6 too


def local_create(session_id: str, argv: list[str]) -> Command:
    payload = {"session_id": session_id, "name": "echo", "command": argv, "ports": [8080]}
    return Command(command_id=f"cmd-{uuid.uuid4().hex}", action="CREATE_SESSION", payload=payload)


@pytest.mark.parametrize("argv", [[*ECHO_ON, "0.0.0.0"], [*HTTP_SERVER_ON, "::"]])
async def test_local_session_listening_beyond_the_loopback_is_refused(tmp_path: Path, argv: list[str]) -> None:
    """The local platform is single-user: a session program that listens on every address would put
    the user's desktop on the network. It is terminated and the session reported failed."""
    driver = LocalDriver(LocalSettings(agent_id=AGENT, local_session_dir=str(tmp_path), local_stop_grace=2))
    session_id = new_session_id()
    try:
        report = await driver.execute(local_create(session_id, argv))
        assert report["state"] == "failed", report
        assert "beyond 127.0.0.1" in report["reason"], report
        record = driver._load(session_id)
        assert record is not None
        stat = proc_stat(record.pid)
        assert stat is None or stat[0] in "ZX"  # the process is gone
    finally:
        await driver.remove_orphans([])


async def test_local_session_on_the_loopback_runs(tmp_path: Path) -> None:
    driver = LocalDriver(LocalSettings(agent_id=AGENT, local_session_dir=str(tmp_path), local_stop_grace=2))
    session_id = new_session_id()
    try:
        report = await driver.execute(local_create(session_id, [*ECHO_ON, "127.0.0.1"]))
        assert report["state"] == "running" and report["endpoint"]["host"] == "127.0.0.1", report
    finally:
        await driver.remove_orphans([])
