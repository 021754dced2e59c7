"""The `kubernetes` platform: a session is a Deployment, a Service and a PVC, via kubernetes_asyncio.

What each session's four objects hold is kubernetes_objects.py's; this module makes, scales, lists
and deletes them.

hibernate and stop = patch replicas to 0 (the annotation io.streamspace.state records which, so
inventory can tell them apart); wake = replicas 1; delete = delete all four (the policy last). Creating
makes each of the four if missing (a 409 means it is there), so a half-made session is completed by a second CREATE.
Inventory and orphans come from label selectors.

`running` only once the session's port answers, the rule of every platform: the kubelet's tcpSocket
probe connects to it, and create and wake wait (SESSION_READY_TIMEOUT) for the Deployment's status to
count the pod Ready (`readyReplicas`, of the current generation); past the timeout the session is
failed ("port 5901 did not answer within 60 s"). The endpoint is reported, and listed by inventory,
only for a Deployment whose pod is Ready. Tested against a fake API (streamspace_testkit.fake_kubernetes, which
models that status), never a real cluster: an image that cannot be pulled shows here only as a pod
that never becomes Ready.

The calls, and nothing else, that helm/streamspace-agent/templates/rbac.yaml grants: deployments
create/patch/delete/list, services, persistentvolumeclaims and networkpolicies create/delete/list.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from streamspace_common.actions import CreateSession, SessionInventoryItem, SessionReport, SessionState

from .base import (
    SESSION_LABEL,
    SessionDriver,
    SessionFailed,
    not_ready_reason,
    observe_ready,
)
from .kubernetes_objects import LABEL_VALUE, STATE_ANNOTATION, Manifests, object_name, parse_selector
from .settings import KubernetesSettings

READY_POLL = 0.5  # seconds between two reads of the Deployment's status while waiting for Ready
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubernetesDriver(SessionDriver):
    platform = "kubernetes"

    def __init__(self, settings: KubernetesSettings) -> None:
        super().__init__(settings.agent_id)
        if len(settings.agent_id) > 63 or not LABEL_VALUE.match(settings.agent_id):
            raise ValueError(f"AGENT_ID={settings.agent_id!r} must be a Kubernetes label value for this platform")
        self.namespace = settings.kubernetes_namespace or self._own_namespace()
        self.api_url = settings.kubernetes_api_url
        self.manifests = Manifests(
            agent_id=settings.agent_id,
            namespace=self.namespace,
            agent_namespace=self._namespace_file() or self.namespace,
            agent_selector=parse_selector(settings.kubernetes_agent_selector),
            storage_size=settings.kubernetes_storage_size,
            storage_class=settings.kubernetes_storage_class,
            session_uid=settings.kubernetes_session_uid,
            cluster_domain=settings.kubernetes_cluster_domain,
        )
        self.ready_timeout = settings.session_ready_timeout
        self._api: client.ApiClient | None = None

    @classmethod
    def _own_namespace(cls) -> str:
        return cls._namespace_file() or "default"

    @staticmethod
    def _namespace_file() -> str:
        """The agent pod's own namespace, "" outside a pod."""
        try:
            return POD_NAMESPACE_FILE.read_text().strip()
        except OSError:
            return ""

    async def _client(self) -> client.ApiClient:
        """KUBERNETES_API_URL if set, else the pod's service account, else ~/.kube/config; made on first use."""
        if self._api is None:
            configuration = client.Configuration()
            if self.api_url:
                configuration.host = self.api_url
            else:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    await config.load_kube_config(client_configuration=configuration)
            self._api = client.ApiClient(configuration)
        return self._api

    async def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(await self._client())

    async def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(await self._client())

    async def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(await self._client())

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    # --- the session operations ------------------------------------------------------------

    async def create(self, spec: CreateSession) -> SessionReport:
        if not spec.image:
            raise SessionFailed("the kubernetes platform runs the template's image, and this template has none")
        if not spec.ports:
            raise SessionFailed("the template has no ports; the kubernetes platform serves the first one")
        core, apps, networking = await self.core(), await self.apps(), await self.networking()
        manifests = self.manifests
        await _exists_is_fine(networking.create_namespaced_network_policy(self.namespace, manifests.policy(spec)))
        await _exists_is_fine(core.create_namespaced_persistent_volume_claim(self.namespace, manifests.claim(spec)))
        await _exists_is_fine(core.create_namespaced_service(self.namespace, manifests.service(spec)))
        if await _exists_is_fine(apps.create_namespaced_deployment(self.namespace, manifests.deployment(spec))):
            return await self.wake(spec.session_id)  # it was there: make sure it runs
        return await self._ready(spec.session_id, spec.ports[0])

    async def _scale(self, session_id: str, replicas: int, state: str) -> Any:
        patch = {"metadata": {"annotations": {STATE_ANNOTATION: state}}, "spec": {"replicas": replicas}}
        apps = await self.apps()
        try:
            return await apps.patch_namespaced_deployment(object_name(session_id), self.namespace, patch)
        except ApiException as exc:
            if exc.status == 404:
                raise SessionFailed(f"no session {session_id} on this agent") from exc
            raise

    async def wake(self, session_id: str) -> SessionReport:
        deployment = await self._scale(session_id, 1, "running")
        return await self._ready(session_id, first_port(deployment))

    async def _ready(self, session_id: str, port: int) -> SessionReport:
        """`running`, with the endpoint, once the Deployment counts its pod Ready; else failed."""
        started = time.monotonic()
        while not is_ready(await self._deployment(session_id)):
            if time.monotonic() > started + self.ready_timeout:
                observe_ready(self.platform, started, "timeout")
                raise SessionFailed(not_ready_reason(port, self.ready_timeout))
            await asyncio.sleep(READY_POLL)
        observe_ready(self.platform, started, "ready")
        return SessionReport(session_id=session_id, state="running", endpoint=self.manifests.endpoint(session_id, port))

    async def _deployment(self, session_id: str) -> Any:
        """The session's Deployment as the API has it now (status included); SessionFailed if gone."""
        selector = f"{self.manifests.selector()},{SESSION_LABEL}={session_id}"
        listed = await (await self.apps()).list_namespaced_deployment(self.namespace, label_selector=selector)
        if not listed.items:
            raise SessionFailed(f"no session {session_id} on this agent")
        return listed.items[0]

    async def hibernate(self, session_id: str) -> SessionReport:
        await self._scale(session_id, 0, "hibernated")
        return SessionReport(session_id=session_id, state="hibernated")

    async def stop(self, session_id: str) -> SessionReport:
        await self._scale(session_id, 0, "stopped")
        return SessionReport(session_id=session_id, state="stopped")

    async def delete(self, session_id: str) -> SessionReport:
        name = object_name(session_id)
        core, apps, networking = await self.core(), await self.apps(), await self.networking()
        await _gone_is_fine(apps.delete_namespaced_deployment(name, self.namespace))
        await _gone_is_fine(core.delete_namespaced_service(name, self.namespace))
        await _gone_is_fine(core.delete_namespaced_persistent_volume_claim(name, self.namespace))
        await _gone_is_fine(networking.delete_namespaced_network_policy(name, self.namespace))  # the pod is gone
        return SessionReport(session_id=session_id, state="deleted")

    # --- what runs -------------------------------------------------------------------------

    async def inventory(self) -> list[SessionInventoryItem]:
        listed = await (await self.apps()).list_namespaced_deployment(
            self.namespace, label_selector=self.manifests.selector()
        )
        items = []
        for deployment in listed.items:
            session_id = deployment.metadata.labels[SESSION_LABEL]
            if deployment.spec.replicas:
                endpoint = self.manifests.endpoint(session_id, first_port(deployment)) if is_ready(deployment) else None
                items.append(SessionInventoryItem(session_id=session_id, state="running", endpoint=endpoint))
            else:
                wanted = (deployment.metadata.annotations or {}).get(STATE_ANNOTATION)
                state: SessionState = "hibernated" if wanted == "hibernated" else "stopped"
                items.append(SessionInventoryItem(session_id=session_id, state=state))
        return sorted(items, key=lambda item: item.session_id)

    async def workload_ids(self) -> list[str]:
        core, apps, networking = await self.core(), await self.apps(), await self.networking()
        selector = self.manifests.selector()
        ids: set[str] = set()
        for listing in (
            await apps.list_namespaced_deployment(self.namespace, label_selector=selector),
            await core.list_namespaced_service(self.namespace, label_selector=selector),
            await core.list_namespaced_persistent_volume_claim(self.namespace, label_selector=selector),
            await networking.list_namespaced_network_policy(self.namespace, label_selector=selector),
        ):
            ids.update(item.metadata.labels[SESSION_LABEL] for item in listing.items)
        return sorted(ids)


def first_port(deployment: Any) -> int:
    port: int = deployment.spec.template.spec.containers[0].ports[0].container_port
    return port


def is_ready(deployment: Any) -> bool:
    """The Deployment's status counts a Ready pod, and describes its current spec (not an older one)."""
    status, generation = deployment.status, deployment.metadata.generation or 0
    if status is None or (status.observed_generation or 0) < generation:
        return False
    return bool(status.ready_replicas)


async def _exists_is_fine(call: Any) -> bool:
    """Await a create; True if the object was already there (409), False if it was made now."""
    try:
        await call
    except ApiException as exc:
        if exc.status == 409:
            return True
        raise SessionFailed(f"the Kubernetes API refused: {exc.status} {exc.reason}") from exc
    return False


async def _gone_is_fine(call: Any) -> None:
    try:
        await call
    except ApiException as exc:
        if exc.status != 404:
            raise
