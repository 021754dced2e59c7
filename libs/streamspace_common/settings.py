"""Process settings, read once from the environment and validated with msgspec (§6)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

import msgspec

STALE_AFTER_INTERVALS = 3  # an agent with no heartbeat for this many intervals is gone (socket closed, not placed on)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/streamspace"
    redis_url: str = "redis://127.0.0.1:6379/1"
    redis_key_prefix: str = ""
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    pod_name: str = msgspec.field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = 0  # 0 means "the service's own default port"
    heartbeat_interval: float = 10.0
    log_format: Literal["json", "console"] = "console"
    log_level: str = "info"
    # dispatcher
    sweep_interval: float = 5.0
    ack_timeout: float = 10.0
    # seconds from an ack to the result before the command is retried (or failed); per command: timeout_seconds
    command_timeout: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    deadline_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # how often ack and completion deadlines are checked
    claim_batch_size: int = 500
    # commands one agent may have sent and not yet acknowledged; the rest of its backlog waits pending,
    # with no ack deadline running (a burst's tail is never redelivered only because the head was slow)
    send_window: Annotated[int, msgspec.Meta(gt=0)] = 1000
    idle_check_interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # how often idle sessions are looked for
    reconcile_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0  # how often every agent's inventory is asked for
    # seconds an agent may be gone (offline, or no heartbeat) before its sessions are marked lost (reconcile round)
    agent_lost_after: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    # seconds a command created through the API without expires_in_seconds/expires_at may stay pending
    # before it ends expired; 0: never (it waits for its agent)
    command_expiry: Annotated[int, msgspec.Meta(ge=0)] = 0
    # days the audit trail keeps a row; older rows are pruned by the dispatchers (the database refuses under 1)
    audit_retention_days: Annotated[int, msgspec.Meta(ge=1, le=100 * 365)] = 365
    # days a finished command (completed, failed, cancelled) and its attempts are kept; a live session's
    # newest command is kept regardless (docs/operations.md "Data lifecycle")
    command_retention_days: Annotated[int, msgspec.Meta(ge=1, le=100 * 365)] = 30
    # hours a finished INVENTORY_SESSIONS command is kept; each agent's newest completed one is kept regardless
    inventory_retention_hours: Annotated[int, msgspec.Meta(ge=1, le=100 * 365 * 24)] = 24
    prune_interval: Annotated[float, msgspec.Meta(gt=0)] = 600.0  # seconds between retention rounds
    # Keys signing deliveries from dispatchers to gateways (HMAC-SHA256), "kid2:secret2,kid1:secret1": the first
    # signs, all verify (docs/security.md "Deliveries"). Empty: the dispatchers and gateways share one generated
    # at first start and stored in PostgreSQL (table auth_secrets), like AUTH_SECRET's.
    delivery_keys: str = ""
    # agent
    agent_id: str = ""
    agent_token: str = ""
    gateway_urls: str = "http://127.0.0.1:8000,http://127.0.0.1:8001"
    agent_platform: Literal["local", "docker", "kubernetes"] = "local"
    agent_concurrency: Annotated[int, msgspec.Meta(ge=0)] = 0  # commands in flight at once; 0: no limit
    agent_max_sessions: Annotated[int, msgspec.Meta(ge=0)] = 0  # sessions it takes, advertised; 0: no limit
    # seconds a docker or kubernetes session's first port has to answer (a TCP connect from the agent; on
    # kubernetes the pod's tcpSocket readiness probe) after create or wake before the session is failed
    session_ready_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # agent, AGENT_PLATFORM=local (docs/drivers.md)
    local_session_dir: str = ""  # state files and data of sessions; "": <tmp>/streamspace-sessions/<agent_id>
    local_stop_grace: Annotated[float, msgspec.Meta(ge=0)] = 5.0  # SIGTERM, then SIGKILL after this many seconds
    local_start_timeout: Annotated[float, msgspec.Meta(gt=0)] = 15.0  # until the process listens on its port
    # agent, AGENT_PLATFORM=docker
    docker_host: str = ""  # "": aiodocker's default (the local socket)
    docker_network: str = "streamspace-sessions"
    docker_publish_host: str = "127.0.0.1"
    # how the agent reaches a session: `published` (the first port published on DOCKER_PUBLISH_HOST, a host
    # port the engine picks) or `address` (nothing published: the container's address on DOCKER_NETWORK and
    # the template's port; for an agent in the engine host's network namespace, e.g. compose's agents on the
    # host network: a container on DOCKER_NETWORK cannot reach sessions, inter-container traffic is off)
    docker_endpoint: Literal["published", "address"] = "published"
    # capabilities given back to session containers after dropping all (comma-separated; "": none):
    # what a desktop image's entrypoint needs to hand /data to its user and drop to it
    docker_cap_add: str = "CHOWN,SETUID,SETGID"
    docker_stop_timeout: Annotated[int, msgspec.Meta(ge=0)] = 10  # seconds before the engine kills
    # seconds pulling an image missing on the engine may take before the session fails; 0: never pull (the
    # images must be on the engine already)
    docker_pull_timeout: Annotated[float, msgspec.Meta(ge=0)] = 120.0
    # agent, AGENT_PLATFORM=kubernetes
    kubernetes_namespace: str = ""  # "": the agent pod's own namespace, else "default"
    kubernetes_api_url: str = ""  # "": in-cluster service account, else ~/.kube/config
    kubernetes_storage_size: str = "1Gi"  # each session's PersistentVolumeClaim
    kubernetes_storage_class: str = ""  # "": the cluster's default StorageClass
    kubernetes_cluster_domain: str = "cluster.local"
    # label selector (`k=v,k=v`) of the agent's own pods: the only pods each session's NetworkPolicy lets
    # in (the chart sets it); required on this platform
    kubernetes_agent_selector: str = ""
    # user, group and fsGroup session containers run as (runAsNonRoot needs a number; not root)
    kubernetes_session_uid: Annotated[int, msgspec.Meta(ge=1, le=2147483647)] = 10001
    agent_state_dir: str = ""  # the dedupe journal's directory; empty: ~/.local/state/streamspace-agent/<id>
    agent_execution_log: str = ""  # append one line per finished handler (command, instance, outcome); "": off
    # agent, streams (docs/streams.md)
    stream_idle_timeout: Annotated[float, msgspec.Meta(gt=0)] = 600.0  # seconds without a byte either way: closed
    stream_max_per_session: Annotated[int, msgspec.Meta(ge=1)] = 4  # streams of one session open at once
    stream_max_per_agent: Annotated[int, msgspec.Meta(ge=1)] = 64  # streams through one agent open at once
    # CIDRs whose addresses may take a tunnel dial-back on a GATEWAY_URLS scheme and port (gateway pods
    # reached by their own IP, e.g. the Helm chart's POD_IP); "": GATEWAY_URLS' own hosts only
    tunnel_networks: str = ""
    # gateway
    # port of a second listener serving only /metrics (bound on HOST); 0: no metrics. Never on the API port
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    max_request_bytes: int = 64 * 1024
    max_bulk_request_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * 1024 * 1024  # POST /api/v1/commands' body
    session_quota: Annotated[int, msgspec.Meta(ge=0)] = 5  # sessions per user (not stopped, failed or deleted)
    # Key signing login tokens (HMAC-SHA256). Empty: the gateways share one generated at first start and
    # stored in PostgreSQL (table auth_secrets), so every replica accepts every other's tokens.
    auth_secret: str = ""
    auth_token_ttl: Annotated[float, msgspec.Meta(gt=0)] = 12 * 3600.0  # seconds a login token is valid
    # gateway, logins and revocation (docs/security.md)
    # login attempts per username per LOGIN_FAILURE_WINDOW, on all replicas together (counted in Redis from
    # before the password check; a successful one is given back)
    login_failure_limit: Annotated[int, msgspec.Meta(ge=1)] = 10
    login_address_limit: Annotated[int, msgspec.Meta(ge=1)] = 50  # login attempts per client address per window
    login_failure_window: Annotated[float, msgspec.Meta(gt=0)] = 300.0  # seconds; the login attempt counters' window
    # comma-separated addresses or CIDRs of the proxies in front of the gateways; only a request from one
    # of them has its client address taken from X-Forwarded-For; empty: the peer's address is the client's
    trusted_proxies: str = ""
    # MiB argon2 may hold at once: password hashes in flight = this / argon2's 64 MiB (at least 1), the rest queue
    password_hash_memory: Annotated[int, msgspec.Meta(ge=1)] = 256
    # seconds between the rounds closing open streams whose credential ended (a NOTIFY wakes one at once)
    stream_access_check: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # gateway, streams (docs/streams.md)
    stream_ticket_ttl: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0  # seconds a stream ticket is valid
    stream_setup_timeout: Annotated[float, msgspec.Meta(gt=0)] = 15.0  # seconds for the agent to dial back
    # ws:// or wss:// URL agents dial back to reach THIS replica; "": ws://<POD_IP, else HOST, else POD_NAME>:<PORT>
    tunnel_url: str = ""
    pod_ip: str = ""  # this replica's own address (the Helm chart sets the pod's IP): agents dial streams back to it
    novnc_dir: str = "/usr/share/novnc"  # the noVNC library the viewer page loads (Debian's `novnc` package)


class SettingsError(SystemExit):
    """Raised for a bad environment value; uncaught, it exits the process with the message."""


FILE_SUFFIX = "_file"  # DATABASE_URL_FILE=/run/secrets/database-url: the value is that file's content


def _read_setting_file(variable: str, path: str) -> str:
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"bad environment: {variable.upper()}: cannot read {path}: {exc.strerror}") from exc


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from upper-case environment variables; a bad value names its variable.

    Any setting may instead be read from a file named by `<NAME>_FILE` (compose's generated secrets,
    a mounted Kubernetes Secret), so a secret need not sit in the process environment; the variable
    itself wins when both are set."""
    environ = dict(os.environ if environ is None else environ)
    names = set(Settings.__struct_fields__)
    raw = dict[str, str]()
    for key, value in environ.items():
        name = key.lower()
        if value != "" and name.endswith(FILE_SUFFIX) and name.removesuffix(FILE_SUFFIX) in names:
            raw.setdefault(name.removesuffix(FILE_SUFFIX), _read_setting_file(key, value))
    raw.update({key.lower(): value for key, value in environ.items() if key.lower() in names and value != ""})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"bad environment: {exc}") from exc


def port_or(settings: Settings, default: int) -> int:
    return settings.port or default
