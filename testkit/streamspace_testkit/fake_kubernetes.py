"""A FAKE Kubernetes API server, for the kubernetes driver's tests only.

No Kubernetes API can run on this machine (no kind, k3s or envtest: docs/test-machine.md), so this small
aiohttp app stands in for one. It implements exactly the calls the driver makes, and nothing more:
create, list (by label selector), patch (merge) and delete of Deployments, and create, list and
delete of Services, PersistentVolumeClaims and NetworkPolicies, namespaced, answering 404 and 409 as the real server
does. Every request is recorded (method, path, query, content type, JSON body) so tests can check
what the driver asked for. Nothing here schedules pods: a Deployment is a stored object, not a
running workload. Readiness is modelled on the Deployment's status, as the deployment controller
writes it: `metadata.generation` counts spec changes, and a read gives `status.observedGeneration`
(that generation) and `readyReplicas` = the replicas asked for, unless the Deployment's name is in
`unready` (its pod runs but its readiness probe fails: the port does not answer), where the field is
left out as the real server leaves out a zero. A name in `behind` has a controller that has not seen
the last spec change yet: `observedGeneration` one short, the rest as if it had.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiohttp import web

RESOURCES = {
    "deployments": ("/apis/apps/v1", "apps/v1", "Deployment"),
    "services": ("/api/v1", "v1", "Service"),
    "persistentvolumeclaims": ("/api/v1", "v1", "PersistentVolumeClaim"),
    "networkpolicies": ("/apis/networking.k8s.io/v1", "networking.k8s.io/v1", "NetworkPolicy"),
}
MERGE_PATCHES = ("application/strategic-merge-patch+json", "application/merge-patch+json")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what a strategic merge does for the maps and scalars the driver patches)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    return web.json_response({**body, "reason": reason, "code": code}, status=code)


class FakeKubernetes:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (resource, namespace, name) -> object
        self.requests: list[Recorded] = []
        self.unready: set[str] = set()  # Deployments whose pods are never Ready, until a test removes them
        self.behind: set[str] = set()  # Deployments whose status describes the spec before the last change
        self._versions = itertools.count(1)
        self.app = web.Application(middlewares=[self._record])
        for resource, (prefix, _, _) in RESOURCES.items():
            collection = f"{prefix}/namespaces/{{namespace}}/{resource}"
            self.app.router.add_get(collection, partial(self.list, resource))
            self.app.router.add_post(collection, partial(self.create, resource))
            self.app.router.add_delete(collection + "/{name}", partial(self.delete, resource))
        self.app.router.add_patch("/apis/apps/v1/namespaces/{namespace}/deployments/{name}", self.patch_deployment)

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.json() if request.body_exists else None
        self.requests.append(Recorded(request.method, request.path, dict(request.query), request.content_type, body))
        return await handler(request)

    def put(self, resource: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store an object as the server would (also used by tests to make objects behind the driver's back)."""
        _, api_version, kind = RESOURCES[resource]
        stored = copy.deepcopy(body)
        stored.update(apiVersion=api_version, kind=kind)
        metadata = stored.setdefault("metadata", {})
        metadata.update(namespace=namespace, resourceVersion=str(next(self._versions)))
        metadata.setdefault("uid", f"uid-{metadata['resourceVersion']}")
        key = (resource, namespace, metadata["name"])
        if resource == "deployments":
            before = self.objects.get(key, {})
            changed = before.get("spec") != stored.get("spec")
            metadata["generation"] = before.get("metadata", {}).get("generation", 0) + (1 if changed else 0)
        self.objects[key] = stored
        return stored

    def observed(self, body: dict[str, Any]) -> dict[str, Any]:
        """A Deployment as read back: its status as the controller would have written it by now."""
        if body["kind"] != "Deployment":
            return body
        replicas = body.get("spec", {}).get("replicas", 1)
        generation = body["metadata"]["generation"] - (1 if body["metadata"]["name"] in self.behind else 0)
        status: dict[str, Any] = {"observedGeneration": generation, "replicas": replicas}
        if replicas and body["metadata"]["name"] not in self.unready:
            status["readyReplicas"] = replicas
        return {**body, "status": status}

    def names(self, resource: str) -> list[str]:
        return sorted(name for (kind, _, name) in self.objects if kind == resource)

    async def list(self, resource: str, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        wanted = [pair.split("=", 1) for pair in request.query.get("labelSelector", "").split(",") if pair]
        items = [
            self.observed(body)
            for (kind, space, _), body in sorted(self.objects.items())
            if kind == resource
            and space == namespace
            and all(body["metadata"].get("labels", {}).get(key) == value for key, value in wanted)
        ]
        _, api_version, kind = RESOURCES[resource]
        return web.json_response({"apiVersion": api_version, "kind": f"{kind}List", "metadata": {}, "items": items})

    async def create(self, resource: str, request: web.Request) -> web.Response:
        namespace, body = request.match_info["namespace"], await request.json()
        name = body["metadata"]["name"]
        if (resource, namespace, name) in self.objects:
            return status(409, "AlreadyExists", f'{resource} "{name}" already exists')
        return web.json_response(self.observed(self.put(resource, namespace, body)), status=201)

    async def delete(self, resource: str, request: web.Request) -> web.Response:
        key = (resource, request.match_info["namespace"], request.match_info["name"])
        if self.objects.pop(key, None) is None:
            return status(404, "NotFound", f'{resource} "{key[2]}" not found')
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    async def patch_deployment(self, request: web.Request) -> web.Response:
        if request.content_type not in MERGE_PATCHES:
            return status(415, "UnsupportedMediaType", f"content type {request.content_type} is not supported here")
        key = ("deployments", request.match_info["namespace"], request.match_info["name"])
        if key not in self.objects:
            return status(404, "NotFound", f'deployments "{key[2]}" not found')
        patched = merge(self.objects[key], await request.json())
        return web.json_response(self.observed(self.put("deployments", key[1], patched)))
