"""Process settings, read once from the environment and validated with msgspec.

Each process reads its own type: the types here are the shared layers (`Settings` for every process,
`ServiceSettings` for every service, `ControlPlaneSettings` for the gateway and the dispatcher); each
service adds its own fields in its `settings.py` (GatewaySettings, DispatcherSettings, AgentSettings,
and the agent's platform drivers theirs). A setting is the upper-cased environment variable of its field.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

STALE_AFTER_INTERVALS = 3  # an agent with no heartbeat for this many intervals is gone (socket closed, not placed on)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every process: the services and the operator tools."""

    log_format: Literal["json", "console"] = "console"
    log_level: str = "info"


class ServiceSettings(Settings, frozen=True, kw_only=True):
    """Every service: gateway, dispatcher and agent."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 means "the service's own default port"
    heartbeat_interval: float = 10.0

    def port_or(self, default: int) -> int:
        return self.port or default


class ControlPlaneSettings(ServiceSettings, frozen=True, kw_only=True):
    """The gateway and the dispatcher: the servers they share, and the replica's name."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/streamspace"
    redis_url: str = "redis://127.0.0.1:6379/1"
    redis_key_prefix: str = ""
    pod_name: str = msgspec.field(default_factory=socket.gethostname)
    # Keys signing deliveries from dispatchers to gateways (HMAC-SHA256), "kid2:secret2,kid1:secret1": the first
    # signs, all verify (docs/security.md "Deliveries"). Empty: the dispatchers and gateways share one generated
    # at first start and stored in PostgreSQL (table auth_secrets), like AUTH_SECRET's.
    delivery_keys: str = ""


class SettingsError(SystemExit):
    """Raised for a bad environment value; uncaught, it exits the process with the message."""


FILE_SUFFIX = "_file"  # DATABASE_URL_FILE=/run/secrets/database-url: the value is that file's content
AnySettings = TypeVar("AnySettings", bound=msgspec.Struct)


def _read_setting_file(variable: str, path: str) -> str:
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"bad environment: {variable.upper()}: cannot read {path}: {exc.strerror}") from exc


def load_settings(kind: type[AnySettings], environ: dict[str, str] | None = None) -> AnySettings:
    """Build `kind` from upper-case environment variables; a bad value names its variable.

    Any setting may instead be read from a file named by `<NAME>_FILE` (compose's generated secrets,
    a mounted Kubernetes Secret), so a secret need not sit in the process environment; the variable
    itself wins when both are set. Variables of fields `kind` does not have are not read."""
    environ = dict(os.environ if environ is None else environ)
    names = set(kind.__struct_fields__)
    raw = dict[str, str]()
    for key, value in environ.items():
        name = key.lower()
        if value != "" and name.endswith(FILE_SUFFIX) and name.removesuffix(FILE_SUFFIX) in names:
            raw.setdefault(name.removesuffix(FILE_SUFFIX), _read_setting_file(key, value))
    raw.update({key.lower(): value for key, value in environ.items() if key.lower() in names and value != ""})
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"bad environment: {exc}") from exc
