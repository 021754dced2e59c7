"""The kubernetes driver against a FAKE Kubernetes API server (testkit/streamspace_testkit/fake_kubernetes.py).

No cluster can run on this machine, so these tests check what the driver asks the API for (paths,
verbs, bodies: labels, replicas, resources, ports, storage, the readiness probe) and what it makes of
the answers, readiness included: the fake writes the Deployment's status as the controller would
(Ready count, observed generation), and a test holds a pod unready. They cannot show a pod running or
answering HTTP, nor the kubelet's probe connecting: that is for a real cluster (docs/drivers.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from streamspace_agent.drivers import create_driver
from streamspace_agent.drivers.kubernetes import KubernetesDriver
from streamspace_agent.drivers.settings import KubernetesSettings
from streamspace_common.schemas import Command
from streamspace_testkit import serve_locally
from streamspace_testkit.fake_kubernetes import FakeKubernetes, Recorded
from unit.test_deploy_static import only, render

NAMESPACE = "sessions-ns"
AGENT = "k8s-test-agent"
LABELS = {"io.streamspace.managed": "true", "io.streamspace.agent_id": AGENT}
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
SERVICES = f"/api/v1/namespaces/{NAMESPACE}/services"
CLAIMS = f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims"
POLICIES = f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies"
AGENT_SELECTOR = "app.kubernetes.io/name=streamspace-agent,app.kubernetes.io/instance=edge"
SELECTOR = f"io.streamspace.managed=true,io.streamspace.agent_id={AGENT}"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeKubernetes, str]]:
    server = FakeKubernetes()
    runner, port = await serve_locally(server.app)
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def api(fake: tuple[FakeKubernetes, str]) -> FakeKubernetes:
    return fake[0]


def driver_settings(url: str, **changes: Any) -> KubernetesSettings:
    return KubernetesSettings(
        agent_id=AGENT,
        agent_platform="kubernetes",
        kubernetes_namespace=NAMESPACE,
        kubernetes_api_url=url,
        kubernetes_storage_size="2Gi",
        kubernetes_storage_class="fast",
        kubernetes_agent_selector=AGENT_SELECTOR,
        **changes,
    )


@pytest.fixture
async def driver(fake: tuple[FakeKubernetes, str]) -> AsyncIterator[KubernetesDriver]:
    kubernetes = create_driver(driver_settings(fake[1]))
    assert isinstance(kubernetes, KubernetesDriver)
    yield kubernetes
    await kubernetes.close()


async def run(driver: KubernetesDriver, action: str, **payload: Any) -> dict[str, Any]:
    return await driver.execute(Command(command_id=f"cmd-{uuid.uuid4().hex}", action=action, payload=payload))


async def create(driver: KubernetesDriver, session_id: str) -> dict[str, Any]:
    return await run(
        driver,
        "CREATE_SESSION",
        session_id=session_id,
        name="echo desktop",
        image="streamspace/echo:dev",
        ports=[8080, 5900],
        resources={"cpu": 0.25, "memory": 128},
        env={"GREETING": "hello"},
    )


def calls(requests: list[Recorded]) -> list[tuple[str, str]]:
    return [(request.method, request.path) for request in requests]


def new_session_id() -> str:
    return f"s-{uuid.uuid4()}"


async def test_session_life_sends_the_right_objects(driver: KubernetesDriver, api: FakeKubernetes) -> None:
    session_id = new_session_id()
    name = f"ss-{session_id}"
    labels = {**LABELS, "io.streamspace.session_id": session_id}

    created = await create(driver, session_id)
    assert created == {
        "session_id": session_id,
        "state": "running",
        "endpoint": {"host": f"{name}.{NAMESPACE}.svc.cluster.local", "port": 8080},
    }
    # the NetworkPolicy first: no session pod ever runs without it (tests/unit/security/test_isolation.py);
    # then the Deployment's status is read until it counts the pod Ready
    assert calls(api.requests) == [
        ("POST", POLICIES),
        ("POST", CLAIMS),
        ("POST", SERVICES),
        ("POST", DEPLOYMENTS),
        ("GET", DEPLOYMENTS),
    ]
    assert api.requests[-1].query == {"labelSelector": f"{SELECTOR},io.streamspace.session_id={session_id}"}
    _, claim, service, deployment, _ = (request.body for request in api.requests)

    assert claim["metadata"] == {"name": name, "labels": labels}
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "2Gi"}},
        "storageClassName": "fast",
    }
    assert service["metadata"] == {"name": name, "labels": labels}
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"] == labels
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, 8080), (5900, 5900)]

    assert deployment["metadata"] == {
        "name": name,
        "labels": labels,
        "annotations": {"io.streamspace.state": "running"},
    }
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"] == {"matchLabels": labels}
    assert spec["template"]["metadata"]["labels"] == {**labels, "io.streamspace.template": "echo-desktop"}
    [container] = spec["template"]["spec"]["containers"]
    assert container["image"] == "streamspace/echo:dev"
    amounts = {"cpu": "250m", "memory": "128Mi"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    assert [p["containerPort"] for p in container["ports"]] == [8080, 5900]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {"GREETING": "hello", "PORT": "8080", "STREAMSPACE_SESSION_ID": session_id}
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    probe = {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 3}
    assert container["readinessProbe"] == probe  # Ready = the first port answers a connect
    assert spec["template"]["spec"]["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": name}}]

    for action, replicas, state in (
        ("HIBERNATE_SESSION", 0, "hibernated"),
        ("WAKE_SESSION", 1, "running"),
        ("STOP_SESSION", 0, "stopped"),
    ):
        before = len(api.requests)
        report = await run(driver, action, session_id=session_id)
        assert report["state"] == state
        patch, *reads = api.requests[before:]
        assert calls(reads) == ([("GET", DEPLOYMENTS)] if state == "running" else [])
        assert (patch.method, patch.path) == ("PATCH", f"{DEPLOYMENTS}/{name}")
        assert patch.content_type == "application/strategic-merge-patch+json"
        assert patch.body == {
            "metadata": {"annotations": {"io.streamspace.state": state}},
            "spec": {"replicas": replicas},
        }
        assert api.objects[("deployments", NAMESPACE, name)]["spec"]["replicas"] == replicas
        [item] = await driver.inventory()
        assert (item.session_id, item.state) == (session_id, state)
        assert api.requests[-1].query == {
            "labelSelector": f"io.streamspace.managed=true,io.streamspace.agent_id={AGENT}"
        }
        if state == "running":
            assert report["endpoint"] == created["endpoint"]
            assert item.endpoint is not None and item.endpoint.port == 8080
        else:
            assert "endpoint" not in report and item.endpoint is None

    before = len(api.requests)
    assert await run(driver, "DELETE_SESSION", session_id=session_id) == {"session_id": session_id, "state": "deleted"}
    assert calls(api.requests[before:]) == [
        ("DELETE", f"{DEPLOYMENTS}/{name}"),
        ("DELETE", f"{SERVICES}/{name}"),
        ("DELETE", f"{CLAIMS}/{name}"),
        ("DELETE", f"{POLICIES}/{name}"),
    ]
    assert api.objects == {}
    assert await driver.inventory() == []
    assert (await run(driver, "DELETE_SESSION", session_id=session_id))["state"] == "deleted"  # 404s: gone is fine


async def test_create_twice_makes_one_deployment_and_scales_it_up(
    driver: KubernetesDriver, api: FakeKubernetes
) -> None:
    session_id = new_session_id()
    first = await create(driver, session_id)
    await run(driver, "STOP_SESSION", session_id=session_id)
    before = len(api.requests)

    assert await create(driver, session_id) == first
    assert calls(api.requests[before:]) == [
        ("POST", POLICIES),  # 409 each: already there
        ("POST", CLAIMS),
        ("POST", SERVICES),
        ("POST", DEPLOYMENTS),
        ("PATCH", f"{DEPLOYMENTS}/ss-{session_id}"),
        ("GET", DEPLOYMENTS),
    ]
    assert api.requests[-2].body["spec"] == {"replicas": 1}
    assert (
        api.names("deployments")
        == api.names("services")
        == api.names("persistentvolumeclaims")
        == api.names("networkpolicies")
        == [f"ss-{session_id}"]
    )


async def test_a_half_made_session_is_completed_by_create(driver: KubernetesDriver, api: FakeKubernetes) -> None:
    session_id = new_session_id()
    # The agent died after making the claim: only the claim is there.
    labels = {**LABELS, "io.streamspace.session_id": session_id}
    api.put("persistentvolumeclaims", NAMESPACE, {"metadata": {"name": f"ss-{session_id}", "labels": labels}})
    assert (await create(driver, session_id))["state"] == "running"
    assert api.names("deployments") == api.names("services") == [f"ss-{session_id}"]


async def test_inventory_is_this_agents_and_notices_a_deployment_deleted_behind_its_back(
    driver: KubernetesDriver, api: FakeKubernetes
) -> None:
    kept, removed = new_session_id(), new_session_id()
    await create(driver, kept)
    await create(driver, removed)
    other = {"metadata": {"name": "ss-other", "labels": {**LABELS, "io.streamspace.agent_id": "another-agent"}}}
    api.put("deployments", NAMESPACE, other)
    assert [item.session_id for item in await driver.inventory()] == sorted([kept, removed])

    del api.objects[("deployments", NAMESPACE, f"ss-{removed}")]

    assert [item.session_id for item in await driver.inventory()] == [kept]
    report = await run(driver, "WAKE_SESSION", session_id=removed)
    assert report["state"] == "failed" and "no session" in report["reason"]


async def test_orphans_with_our_labels_are_removed(driver: KubernetesDriver, api: FakeKubernetes) -> None:
    known, orphan = new_session_id(), new_session_id()
    await create(driver, known)
    orphan_labels = {**LABELS, "io.streamspace.session_id": orphan}
    api.put("services", NAMESPACE, {"metadata": {"name": f"ss-{orphan}", "labels": orphan_labels}})
    api.put("persistentvolumeclaims", NAMESPACE, {"metadata": {"name": f"ss-{orphan}", "labels": orphan_labels}})
    api.put("networkpolicies", NAMESPACE, {"metadata": {"name": f"ss-{orphan}", "labels": orphan_labels}})
    stranger = {**orphan_labels, "io.streamspace.agent_id": "another-agent", "io.streamspace.session_id": "x"}
    api.put("services", NAMESPACE, {"metadata": {"name": "ss-x", "labels": stranger}})

    assert await driver.remove_orphans([known]) == [orphan]
    assert api.names("services") == sorted([f"ss-{known}", "ss-x"])
    assert api.names("persistentvolumeclaims") == api.names("networkpolicies") == [f"ss-{known}"]
    assert await driver.remove_orphans([known]) == []


async def test_inventory_sessions_reports_sessions_and_every_labelled_leftover(
    driver: KubernetesDriver, api: FakeKubernetes
) -> None:
    """INVENTORY_SESSIONS (what the control plane reconciles with): the sessions found, and the ids of
    every workload part with our labels, a Service left without its Deployment included."""
    known, leftover = new_session_id(), new_session_id()
    await create(driver, known)
    api.put(
        "services",
        NAMESPACE,
        {"metadata": {"name": f"ss-{leftover}", "labels": {**LABELS, "io.streamspace.session_id": leftover}}},
    )
    report = await run(driver, "INVENTORY_SESSIONS")
    assert [item["session_id"] for item in report["sessions"]] == [known]
    assert report["sessions"][0]["state"] == "running"
    assert sorted(report["workloads"]) == sorted([known, leftover])


async def test_the_chart_grants_exactly_the_calls_the_driver_makes(
    driver: KubernetesDriver, api: FakeKubernetes
) -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
    session_id = new_session_id()
    await create(driver, session_id)
    await create(driver, session_id)
    for action in ("HIBERNATE_SESSION", "WAKE_SESSION", "STOP_SESSION"):
        await run(driver, action, session_id=session_id)
    await driver.inventory()
    await driver.remove_orphans([])
    used = set()
    for request in api.requests:
        parts = request.path.strip("/").split("/")
        group = parts[1] if parts[0] == "apis" else ""
        resource = parts[-2] if request.method in ("PATCH", "DELETE") else parts[-1]
        verb = {"POST": "create", "GET": "list", "PATCH": "patch", "DELETE": "delete"}[request.method]
        used.add((group, resource, verb))

    values = {"agent": {"id": AGENT, "platform": "kubernetes", "gatewayUrls": "http://g:8000"}}
    role = only(render(helm, "streamspace-agent", {**values, "agentToken": {"value": "t"}}), "Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == used


async def pending(task: asyncio.Task[Any]) -> bool:
    """The task still waits after a while (generous: the machine is loaded)."""
    await asyncio.sleep(1.5)
    return not task.done()


async def test_running_and_the_endpoint_only_once_the_pod_is_ready(
    driver: KubernetesDriver, api: FakeKubernetes
) -> None:
    """Create and wake wait for the Deployment to count its pod Ready (its tcpSocket probe answered),
    and for a status of the current generation; meanwhile inventory lists it running without an
    endpoint, so no stream is opened to a pod that does not listen yet."""
    session_id = new_session_id()
    name = f"ss-{session_id}"
    api.unready.add(name)
    ready = ready_metric("ready")
    creating = asyncio.create_task(create(driver, session_id))
    assert await pending(creating)
    [item] = await driver.inventory()
    assert (item.state, item.endpoint) == ("running", None)

    api.unready.discard(name)
    created = await asyncio.wait_for(creating, 30)
    assert created["state"] == "running" and created["endpoint"]["port"] == 8080
    [item] = await driver.inventory()
    assert item.endpoint is not None and item.endpoint.host == created["endpoint"]["host"]

    await run(driver, "HIBERNATE_SESSION", session_id=session_id)
    api.behind.add(name)  # the controller has not seen the wake's spec change: its Ready count is stale
    waking = asyncio.create_task(run(driver, "WAKE_SESSION", session_id=session_id))
    assert await pending(waking)
    api.behind.discard(name)
    assert await asyncio.wait_for(waking, 30) == created
    assert ready_metric("ready") == ready + 2  # streamspace_agent_session_ready_seconds, per wait


def ready_metric(outcome: str) -> float:
    labels = {"platform": "kubernetes", "outcome": outcome}
    return REGISTRY.get_sample_value("streamspace_agent_session_ready_seconds_count", labels) or 0.0


async def test_a_pod_never_ready_fails_the_session_with_the_reason(fake: tuple[FakeKubernetes, str]) -> None:
    api, url = fake
    driver = KubernetesDriver(driver_settings(url, session_ready_timeout=1))
    try:
        session_id = new_session_id()
        api.unready.add(f"ss-{session_id}")
        timeouts = ready_metric("timeout")
        report = await asyncio.wait_for(create(driver, session_id), 30)
        assert report == {"session_id": session_id, "state": "failed", "reason": "port 8080 did not answer within 1 s"}
        assert ready_metric("timeout") == timeouts + 1
    finally:
        await driver.close()


def test_the_agent_id_must_be_a_label_value() -> None:
    with pytest.raises(ValueError, match="label value"):
        create_driver(
            KubernetesSettings(agent_id="agent:with:colons", agent_platform="kubernetes", kubernetes_namespace="x")
        )


@pytest.mark.parametrize("selector", ["", "app", "a=b,,c", "a=b c"])
def test_the_agent_selector_is_required(selector: str) -> None:
    """Without the agent pods' labels no NetworkPolicy could admit the agent: refuse to start."""
    with pytest.raises(ValueError, match="KUBERNETES_AGENT_SELECTOR"):
        create_driver(
            KubernetesSettings(
                agent_id="a", agent_platform="kubernetes", kubernetes_namespace="x", kubernetes_agent_selector=selector
            )
        )
