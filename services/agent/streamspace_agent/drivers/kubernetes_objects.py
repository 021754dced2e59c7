"""The four objects of a `kubernetes` session, as the API takes them (kubernetes.py makes them).

Per session, in KUBERNETES_NAMESPACE, all named `ss-<session_id>` and labelled
io.streamspace.managed=true, io.streamspace.session_id, io.streamspace.agent_id:
- a NetworkPolicy, made first so no session pod ever runs without it: the session's pods admit
  ingress only from the agent's own pods (KUBERNETES_AGENT_SELECTOR; in another namespace, that
  namespace's pods of that selector) and only on the template's ports. Other sessions, the gateways and
  every other pod are refused (docs/security.md, "## Session isolation");
- a PersistentVolumeClaim (always one: KUBERNETES_STORAGE_SIZE, ReadWriteOnce, KUBERNETES_STORAGE_CLASS
  or the cluster's default) mounted at /data, so a hibernated session keeps its files;
- a ClusterIP Service exposing the template's ports; the endpoint is its cluster DNS name
  (`ss-<id>.<namespace>.svc.<KUBERNETES_CLUSTER_DOMAIN>`) and the first port;
- a Deployment (Recreate strategy, one container `session` with the image's own command, PORT set,
  cpu/memory as both requests and limits, a tcpSocket readiness probe on the first port) with replicas
  1. Its pods run restricted (the Pod Security Standard): as KUBERNETES_SESSION_UID, never root, no
  privilege escalation, every capability dropped, the runtime's default seccomp profile, no
  service-account token and no service links.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from streamspace_common.actions import CreateSession, Endpoint

from .base import AGENT_LABEL, MANAGED_LABEL, SESSION_LABEL, TEMPLATE_LABEL

STATE_ANNOTATION = "io.streamspace.state"
# the kubelet's probe of the session's first port: every second, 2 s to connect, unready after 3 misses
READINESS = {"periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 3}
DATA_PATH = "/data"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def object_name(session_id: str) -> str:
    return f"ss-{session_id}"


def parse_selector(text: str) -> dict[str, str]:
    """KUBERNETES_AGENT_SELECTOR (`k=v,k=v`) as matchLabels; ValueError when empty or malformed."""
    pairs = [part.strip().split("=", 1) for part in text.split(",") if part.strip()]
    labels = {key.strip(): value.strip() for key, value in (pair for pair in pairs if len(pair) == 2)}
    if not labels or len(labels) != len(pairs) or not all(LABEL_VALUE.match(v) for v in labels.values()):
        raise ValueError(
            f"KUBERNETES_AGENT_SELECTOR={text!r} must be the agent pods' labels as k=v[,k=v]: each session's "
            "NetworkPolicy admits those pods alone"
        )
    return labels


def label_value(text: str) -> str:
    """Template names may hold anything; a label value may not. Keep what fits."""
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:63].strip("-_.")
    return cleaned


@dataclass(frozen=True)
class Manifests:
    """One agent's session objects: its labels, where they live, what they may claim and who may reach them."""

    agent_id: str
    namespace: str
    agent_namespace: str  # the agent pods' own namespace: the policy admits them from there
    agent_selector: dict[str, str]  # the agent pods' labels (KUBERNETES_AGENT_SELECTOR)
    storage_size: str
    storage_class: str
    session_uid: int
    cluster_domain: str

    def labels(self, session_id: str) -> dict[str, str]:
        return {MANAGED_LABEL: "true", SESSION_LABEL: session_id, AGENT_LABEL: self.agent_id}

    def selector(self) -> str:
        return f"{MANAGED_LABEL}=true,{AGENT_LABEL}={self.agent_id}"

    def _metadata(self, session_id: str, **extra: Any) -> dict[str, Any]:
        return {"name": object_name(session_id), "labels": self.labels(session_id), **extra}

    def claim(self, spec: CreateSession) -> Any:
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": self.storage_size}},
        }
        if self.storage_class:
            claim["storageClassName"] = self.storage_class
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self._metadata(spec.session_id),
            "spec": claim,
        }

    def service(self, spec: CreateSession) -> Any:
        ports = [{"name": f"port-{port}", "port": port, "targetPort": port, "protocol": "TCP"} for port in spec.ports]
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self._metadata(spec.session_id),
            "spec": {"type": "ClusterIP", "selector": self.labels(spec.session_id), "ports": ports},
        }

    def deployment(self, spec: CreateSession) -> Any:
        labels = {**self.labels(spec.session_id), TEMPLATE_LABEL: label_value(spec.name)}
        env = {**spec.env, "PORT": str(spec.ports[0]), "STREAMSPACE_SESSION_ID": spec.session_id}
        amounts = {"cpu": f"{round(spec.resources.cpu * 1000)}m", "memory": f"{spec.resources.memory}Mi"}
        container = {
            "name": "session",
            "image": spec.image,
            "env": [{"name": name, "value": value} for name, value in env.items()],
            "ports": [{"containerPort": port, "protocol": "TCP"} for port in spec.ports],
            "resources": {"requests": amounts, "limits": amounts},
            "volumeMounts": [{"name": "data", "mountPath": DATA_PATH}],
            "readinessProbe": {"tcpSocket": {"port": spec.ports[0]}, **READINESS},
        }
        volume = {"name": "data", "persistentVolumeClaim": {"claimName": object_name(spec.session_id)}}
        pod_security, container["securityContext"] = self.pod_security()
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self._metadata(spec.session_id, annotations={STATE_ANNOTATION: "running"}),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": self.labels(spec.session_id)},
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [container],
                        "volumes": [volume],
                        "securityContext": pod_security,
                        "automountServiceAccountToken": False,  # a session has no business with the API
                        "enableServiceLinks": False,  # nor with the addresses of every Service around it
                    },
                },
            },
        }

    def policy(self, spec: CreateSession) -> Any:
        """Ingress to the session's pods from the agent's pods alone, on the template's ports alone."""
        agents: dict[str, Any] = {"podSelector": {"matchLabels": self.agent_selector}}
        if self.agent_namespace != self.namespace:
            agents["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": self.agent_namespace}}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self._metadata(spec.session_id),
            "spec": {
                "podSelector": {"matchLabels": self.labels(spec.session_id)},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [agents], "ports": [{"protocol": "TCP", "port": port} for port in spec.ports]}],
            },
        }

    def pod_security(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The pod's and the container's securityContext: the "restricted" Pod Security Standard."""
        uid = self.session_uid
        pod = {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        container = {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        return pod, container

    def endpoint(self, session_id: str, port: int) -> Endpoint:
        host = f"{object_name(session_id)}.{self.namespace}.svc.{self.cluster_domain}"
        return Endpoint(host=host, port=port)
