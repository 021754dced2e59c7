"""compose.yaml's credentials, generated on first start (`streamspace-admin secrets init DIR`).

The one-shot `secrets` service runs this into the named volume `secrets` before anything else starts.
A password is made once (random, 256 bits) and kept: PostgreSQL and RabbitMQ take theirs only when
their data volume is first made, so it must never change behind their back. What is derived from the
passwords (the services' URLs, Redis's ACL file, RabbitMQ's config) is rewritten on every start, so a
rotated password (a file replaced by hand, docs/security.md) reaches every consumer on the next `up`.

    postgres-password, rabbitmq-password, agent-token     made once
    redis-<user>-password (gateway-a, gateway-b, dispatcher, healthcheck)   made once
    database-url, rabbitmq-url, redis-url-<service>        DATABASE_URL_FILE, RABBITMQ_URL_FILE, REDIS_URL_FILE
    redis-users.acl                                        redis-server --aclfile (hashes, no passwords)
    rabbitmq.conf                                          RABBITMQ_CONFIG_FILE: the broker's only user

Files are readable by every container that mounts the volume (each runs as its own user): compose
is one host, and only StreamSpace's own containers mount it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .redis_acl import RedisUser, acl_file

MODE = 0o444


@dataclass(frozen=True)
class Layout:
    """Host names and names of the compose project (compose.yaml's services)."""

    gateways: tuple[str, ...] = ("gateway-a", "gateway-b")
    postgres_host: str = "postgres"
    redis_host: str = "redis"
    redis_db: int = 1
    rabbitmq_host: str = "rabbitmq"
    database: str = "streamspace"
    user: str = "streamspace"  # PostgreSQL's and RabbitMQ's user
    redis_key_prefix: str = ""
    redis_users: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "redis_users", (*self.gateways, "dispatcher", "healthcheck"))


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _write(path: Path, text: str) -> None:
    """Replace `path` atomically (a reader never sees half a file)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    partial.write_text(text)
    partial.chmod(MODE)
    os.replace(partial, path)


def _once(directory: Path, name: str) -> str:
    path = directory / name
    if not path.exists():
        _write(path, new_secret())
    return path.read_text().strip()


def init_secrets(directory: Path, layout: Layout = Layout()) -> list[str]:
    """Make the missing passwords and (re)write every derived file; return the names made anew."""
    directory.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in directory.iterdir()}
    postgres = _once(directory, "postgres-password")
    rabbitmq = _once(directory, "rabbitmq-password")
    _once(directory, "agent-token")
    redis = {user: _once(directory, f"redis-{user}-password") for user in layout.redis_users}

    user = quote(layout.user, safe="")
    _write(
        directory / "database-url",
        f"postgresql://{user}:{quote(postgres, safe='')}@{layout.postgres_host}:5432/{layout.database}",
    )
    _write(directory / "rabbitmq-url", f"amqp://{user}:{quote(rabbitmq, safe='')}@{layout.rabbitmq_host}:5672/")
    for name in (*layout.gateways, "dispatcher"):
        password = redis[name]
        url = f"redis://{quote(name, safe='')}:{quote(password, safe='')}@{layout.redis_host}:6379/{layout.redis_db}"
        _write(directory / f"redis-url-{name}", url)
    users = [RedisUser.with_password(g, "gateway", redis[g], pod=g) for g in layout.gateways]
    users += [
        RedisUser.with_password("dispatcher", "dispatcher", redis["dispatcher"]),
        RedisUser.with_password("healthcheck", "healthcheck", redis["healthcheck"]),
    ]
    _write(directory / "redis-users.acl", acl_file(users, layout.redis_key_prefix))
    _write(directory / "rabbitmq.conf", rabbitmq_conf(layout.user, rabbitmq))
    return sorted({p.name for p in directory.iterdir()} - before)


# What the dispatcher's retries touch (keys.py): the exchange and queues named streamspace.retry*, and
# the default exchange it publishes into the wait queues through (permission name `amq.default`).
RETRY_RESOURCES = r"^streamspace\.retry(\..*)?$"
RETRY_AND_DEFAULT_EXCHANGE = r"^(streamspace\.retry(\..*)?|amq\.default)$"


def rabbitmq_conf(user: str, password: str) -> str:
    """The broker's whole config: its one user (no guest) with rights on the retry topology of the default
    vhost only, and the management UI for that user (tag `management`: its own vhost, no administration)."""
    return "\n".join(
        [
            "listeners.tcp.default = 5672",
            "management.tcp.port = 15672",
            f"default_user = {user}",
            f"default_pass = {password}",
            "default_vhost = /",
            "default_user_tags.management = true",
            f"default_permissions.configure = {RETRY_RESOURCES}",
            # read = write: RabbitMQ 3.10 swaps the two when it reads them from the config (3.12 does not)
            f"default_permissions.read = {RETRY_AND_DEFAULT_EXCHANGE}",
            f"default_permissions.write = {RETRY_AND_DEFAULT_EXCHANGE}",
            "",
        ]
    )
