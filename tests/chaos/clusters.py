"""Throwaway HA clusters of the three engines for the chaos suite's failover scenarios (13-15), from
Debian's packages on this host (recipes in docs/test-machine.md; docs/chaos.md says why
not testcontainers):

- `PatroniCluster`: one etcd and three PostgreSQL members under Patroni, synchronous replication;
  its `url` is a multi-host DSN with target_session_attrs=read-write.
- `SentinelRedis`: a Redis master, two replicas and three Sentinels; its `url` is a redis+sentinel:// URL.
- `RabbitCluster`: three RabbitMQ nodes joined in one cluster; `url(vhost)` lists the three nodes.

Each runs on free ports in a temporary directory of its own and is removed by `destroy()`; `kill_*`
is the fault (kill -9, the process never comes back). The machine's shared servers are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import typing
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from streamspace_testkit import free_port, kill_group, spawn, wait_until_blocking
from streamspace_testkit.servers import PG_BIN, RabbitServer, Servers

SENTINEL_SERVICE = "chaos"
REDIS_SERVER = ("redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")


def _wait(probe: Callable[[], object], what: str, timeout: float) -> None:
    """Poll `probe()` until it returns something truthy (an exception counts as not yet)."""
    wait_until_blocking(probe, timeout=timeout, interval=0.2, what=what, retry_on=(Exception,))


# --- PostgreSQL under Patroni ------------------------------------------------------------------


class PatroniCluster:
    """etcd + three Patroni members (leader, synchronous standby, replica), each in its own process group."""

    MEMBERS = 3

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="chaos-patroni-"))
        self.scope = f"chaos{uuid.uuid4().hex[:8]}"
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.pg_ports = [free_port() for _ in range(self.MEMBERS)]
        self.api_ports = [free_port() for _ in range(self.MEMBERS)]
        self.etcd: subprocess.Popen[bytes] | None = None
        self.members: list[subprocess.Popen[bytes] | None] = [None] * self.MEMBERS
        self.killed: list[int] = []
        self.killed_at = 0.0  # wall clock of the last kill signal

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.pg_ports)
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def member_url(self, member: int) -> str:
        """One member only (the single-host DSN the scenario's negative check uses)."""
        return f"postgresql://postgres@127.0.0.1:{self.pg_ports[member]}/postgres"

    def start(self) -> None:
        os.chmod(self.base, 0o755)
        self.etcd = spawn(
            [
                "etcd",
                *("--name", "default", "--data-dir", str(self.base / "etcd")),
                *("--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}"),
                *("--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}"),
                *("--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer}"),
                *("--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer}"),
                *("--initial-cluster", f"default=http://127.0.0.1:{self.etcd_peer}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.base / "etcd.log").open("ab"),
        )
        _wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=1), "etcd", 30)
        for member in range(self.MEMBERS):
            self.members[member] = self._start_member(member)
            if member == 0:  # the first bootstraps the cluster: the others then clone it
                _wait(lambda: self.leader() == 0, "patroni leader", 90)
        _wait(self.settled, "patroni members", 120)

    def _start_member(self, member: int) -> subprocess.Popen[bytes]:
        home = self.base / f"m{member}"
        home.mkdir(exist_ok=True)
        shutil.chown(home, "postgres", "postgres") if os.geteuid() == 0 else None
        config = home / "member.yml"
        config.write_text(json.dumps(self._config(member, home)))  # JSON is YAML
        return spawn(
            ["patroni", str(config)],
            stdout=(home / "patroni.log").open("ab"),
            stderr=subprocess.STDOUT,
            user="postgres" if os.geteuid() == 0 else None,
        )

    def _config(self, member: int, home: Path) -> dict[str, object]:
        api, port = self.api_ports[member], self.pg_ports[member]
        return {
            "scope": self.scope,
            "name": f"m{member}",
            "restapi": {"listen": f"127.0.0.1:{api}", "connect_address": f"127.0.0.1:{api}"},
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": 10,
                    "loop_wait": 2,
                    "retry_timeout": 5,
                    "synchronous_mode": True,
                    "postgresql": {
                        "parameters": {"max_connections": 300, "fsync": "off", "wal_level": "replica"},
                    },
                },
                "initdb": [{"encoding": "UTF8"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{port}",
                "connect_address": f"127.0.0.1:{port}",
                "data_dir": str(home / "data"),
                "bin_dir": str(PG_BIN),
                "pgpass": str(home / "pgpass"),
                "authentication": {"superuser": {"username": "postgres"}, "replication": {"username": "postgres"}},
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "parameters": {"unix_socket_directories": str(home)},
            },
        }

    def cluster(self) -> list[dict[str, object]]:
        """Patroni's view of the members (GET /cluster of any living member's REST API)."""
        for member, api in enumerate(self.api_ports):
            if member in self.killed:
                continue
            url = f"http://127.0.0.1:{api}/cluster"
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=2) as response:
                members: list[dict[str, object]] = json.load(response)["members"]
                return members
        return []

    def leader(self) -> int | None:
        for found in self.cluster():
            if found.get("role") == "leader" and found.get("state") == "running":
                return int(str(found["name"])[1:])
        return None

    def settled(self) -> bool:
        """A leader, a synchronous standby and a streaming replica."""
        members = self.cluster()
        roles = sorted(str(found.get("role")) for found in members if found.get("state") in ("running", "streaming"))
        return roles == ["leader", "replica", "sync_standby"]

    def kill_leader(self) -> int:
        """kill -9 the leader's Patroni and its PostgreSQL (as if its host died); returns its number."""
        leader = self.leader()
        assert leader is not None, self.cluster()
        self.kill_member(leader)
        return leader

    def kill_member(self, member: int) -> None:
        self.killed.append(member)
        self.killed_at = time.time()
        postmaster = self.base / f"m{member}" / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(postmaster.read_text().split()[0])
            kill_group(self.members[member])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        kill_group(self.members[member])

    def destroy(self) -> None:
        for member in range(self.MEMBERS):
            if member not in self.killed:
                self.kill_member(member)
        kill_group(self.etcd)
        shutil.rmtree(self.base, ignore_errors=True)


# --- Redis with Sentinel ------------------------------------------------------------------------


class SentinelRedis:
    """A master, two replicas and three Sentinels (quorum 2, down after 1 s)."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="chaos-sentinel-"))
        self.ports = [free_port() for _ in range(3)]  # ports[0] is the first master
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.killed_at = 0.0

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/1"

    def master_url(self) -> str:
        """The current master only (the plain URL the scenario's negative check uses)."""
        return f"redis://127.0.0.1:{self.master_port()}/1"

    def start(self) -> None:
        for port in self.ports:
            replica = [] if port == self.ports[0] else ["--replicaof", "127.0.0.1", str(self.ports[0])]
            self.servers[port] = spawn(
                [*REDIS_SERVER, "--port", str(port), "--dir", str(self.base), *replica],
                stdout=(self.base / f"redis-{port}.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
        _wait(lambda: self._info(self.ports[0]).get("connected_slaves") == 2, "redis replicas", 30)
        for port in self.sentinel_ports:
            config = self.base / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.base}\n"
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.ports[0]} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 10000\n"
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
            )
            self.sentinels.append(
                spawn(
                    ["redis-sentinel", str(config)],
                    stdout=(self.base / f"sentinel-{port}.log").open("ab"),
                    stderr=subprocess.STDOUT,
                )
            )
        _wait(self._sentinels_see_all, "sentinels", 30)

    def _info(self, port: int) -> dict[str, object]:
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            info: dict[str, object] = client.info("replication")
            return info
        finally:
            client.close()

    def _sentinel_view(self, port: int) -> dict[str, object]:
        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            masters = typing.cast(dict[str, dict[str, object]], client.sentinel_masters())
            return masters[SENTINEL_SERVICE]
        finally:
            client.close()

    def _sentinels_see_all(self) -> bool:
        views = [self._sentinel_view(port) for port in self.sentinel_ports]
        return all(int(str(v["num-slaves"])) == 2 and int(str(v["num-other-sentinels"])) == 2 for v in views)

    def master_port(self) -> int:
        """The master's port as the Sentinels now see it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError, KeyError):
                return int(str(self._sentinel_view(port)["port"]))
        raise RuntimeError("no sentinel answers")

    def kill_master(self) -> int:
        """kill -9 the master (it never comes back); returns its port."""
        port = self.master_port()
        process = self.servers.pop(port)
        self.killed_at = time.time()
        process.kill()
        process.wait()
        return port

    def destroy(self) -> None:
        for process in [*self.sentinels, *self.servers.values()]:
            process.kill()
            process.wait()
        shutil.rmtree(self.base, ignore_errors=True)


# --- a RabbitMQ cluster -------------------------------------------------------------------------


class RabbitCluster:
    """Three nodes in one cluster (the 2nd and 3rd join the 1st); quorum queues spread over all three."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="chaos-rabbitc-"))
        tag = uuid.uuid4().hex[:6]
        self.nodes = [RabbitServer(self.base / f"n{i}", f"chaos{tag}n{i}") for i in range(3)]
        self.killed: list[RabbitServer] = []
        self.killed_at = 0.0

    def url(self, vhost: str) -> str:
        return ",".join(f"amqp://guest:guest@127.0.0.1:{node.port}/{vhost}" for node in self.nodes)

    def start(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as starting:  # each start waits for its node: all at once
            list(starting.map(RabbitServer.start, self.nodes))
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", self.nodes[0].node)
            node.ctl("start_app")

    def add_vhost(self, vhost: str) -> None:
        self.nodes[0].ctl("add_vhost", vhost)
        self.nodes[0].ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def kill_node(self, index: int = 0) -> None:
        self.killed_at = time.time()
        self.nodes[index].kill()
        self.killed.append(self.nodes[index])

    def destroy(self) -> None:
        for node in self.nodes:
            if node not in self.killed:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    node.stop()
        for node in self.killed:  # a killed node's epmd registration and files only
            node.kill()
        shutil.rmtree(self.base, ignore_errors=True)


class WithCluster:
    """The throwaway `Servers` of the suite with one engine swapped for its cluster (ChaosRun reads
    `postgres.url`, `redis.url`, `rabbit.url(vhost)` and `rabbit.add_vhost`)."""

    def __init__(
        self,
        servers: Servers,
        postgres: PatroniCluster | None = None,
        redis_cluster: SentinelRedis | None = None,
        rabbit: RabbitCluster | None = None,
    ) -> None:
        self.postgres = postgres or servers.postgres
        self.redis = redis_cluster or servers.redis
        self.rabbit = rabbit or servers.rabbit
