"""Throwaway PostgreSQL, Redis and RabbitMQ servers for the chaos suite and the bench (recipes in
docs/test-machine.md). The chaos suite kills and restarts these; the machine's shared servers are never
touched. Each scenario gets its own database, Redis key prefix and vhost on them. Every server is
registered with the process safety net (processes.py), so none outlives a killed run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import redis

from .processes import register, spawn
from .stack import RedisServer, bindable, free_port
from .waits import wait_until_blocking

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def _as_postgres() -> str | None:
    """initdb refuses root: as root, run the server as the postgres user."""
    return "postgres" if os.geteuid() == 0 else None


def rabbitmqctl(node: str, *args: str, timeout: float = 90) -> None:
    """rabbitmqctl against one node of ours (the throwaway server or a cluster node)."""
    subprocess.run(
        [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node, *args], check=True, capture_output=True, timeout=timeout
    )


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.base / "data"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        os.chmod(self.base, 0o755)
        initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            initdb = ["runuser", "-u", "postgres", "--", *initdb]
        subprocess.run(initdb, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.process = spawn(
            [
                str(PG_BIN / "postgres"),
                *("-D", str(self.data), "-p", str(self.port), "-k", str(self.data)),
                *("-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300", "-c", "fsync=off"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.base / "postgres.log").open("ab"),
            user=_as_postgres(),
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until pg_isready answers (blocking: from a thread of its own, or code without an event loop)."""

        def ready() -> bool:
            probe = [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
            if subprocess.run(probe, capture_output=True).returncode == 0:
                return True
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.base / 'postgres.log').read_text()[-2000:]}")
            return False

        wait_until_blocking(ready, timeout=timeout, what="postgres ready")

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        """SIGINT: PostgreSQL's fast shutdown (what a restart does to every session)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            self.process.wait(timeout=60)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class RabbitServer:
    """A throwaway RabbitMQ node (~6-12 s to start on this machine); it keeps its data across a restart.
    `base` and `name`: a directory and node name of the caller's (tests/chaos/clusters.py's nodes)."""

    START_ATTEMPTS = 3

    def __init__(self, base: Path | None = None, name: str | None = None) -> None:
        self.node = f"{name or 'chaos' + uuid.uuid4().hex[:8]}@localhost"
        self.base = base or Path(tempfile.mkdtemp(prefix="chaos-rabbit-"))
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "plugins").write_text("[].\n")
        self.choose_ports()

    def choose_ports(self) -> None:
        """Free ports now; another process may take one before the node binds it (free_port's ports come
        from the ephemeral range every outgoing connection draws on): start() then tries new ones."""
        self.port = free_port()
        self.dist_port = free_port()
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")

    def url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def ctl(self, *args: str, timeout: float = 90) -> None:
        rabbitmqctl(self.node, *args, timeout=timeout)

    def start(self) -> None:
        """Start the node; a first start whose port was taken meanwhile (the node exits at once, seen
        2026-12-06: `dist_port_already_used`) is tried again on new ports. A restart keeps its ports."""
        first = not (self.base / "mnesia" / "started-once").exists()
        for attempt in range(1, self.START_ATTEMPTS + 1):
            if first and not (bindable(self.port) and bindable(self.dist_port)):
                self.choose_ports()  # taken since they were chosen: a failed start costs `wait`'s 90 s
            try:
                self._start_once()
                return
            except subprocess.CalledProcessError:
                if attempt == self.START_ATTEMPTS or not first:
                    raise
                self.choose_ports()

    def _start_once(self) -> None:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "plugins"),
            "ERL_CRASH_DUMP": str(self.base / "erl_crash.dump"),  # not in the caller's working directory
        }
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"], env=env, check=True, capture_output=True, timeout=60
        )
        self.ctl("wait", "--timeout", "90", str(self.pid_file), timeout=120)
        register(os.getpgid(int(self.pid_file.read_text().strip())))  # -detached: no child of ours to die with us
        (self.base / "mnesia" / "started-once").touch()

    @property
    def pid_file(self) -> Path:
        return self.base / "mnesia" / f"{self.node}.pid"

    def kill(self) -> None:
        """kill -9 the node's Erlang VM (as if its host died)."""
        with contextlib.suppress(ProcessLookupError, OSError, ValueError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)

    def stop(self) -> None:
        self.ctl("stop")

    def add_vhost(self, vhost: str) -> None:
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class Servers:
    """The three throwaway servers, started once and shared by the scenarios (one after another)."""

    def __init__(self) -> None:
        self.postgres = PostgresServer()
        self.redis = RedisServer()
        self.rabbit = RabbitServer()

    def start(self) -> None:
        self.postgres.init()
        self.postgres.start()
        self.redis.start()
        self.wait_redis()
        self.rabbit.start()

    def wait_redis(self, timeout: float = 30) -> None:
        """Until the throwaway Redis answers PING (blocking, like `PostgresServer.wait_ready`)."""
        client = redis.Redis(port=self.redis.port, socket_timeout=1)
        try:
            wait_until_blocking(client.ping, timeout=timeout, what="redis ready", retry_on=(redis.ConnectionError,))
        finally:
            client.close()

    def stop(self) -> None:
        self.redis.stop()
        self.rabbit.destroy()
        self.postgres.destroy()
