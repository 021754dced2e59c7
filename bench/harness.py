"""Pieces of the benchmark harness: named queries, completion timing, CPU accounting, processes, the peer's
venv, a PostgreSQL of the bench's own. Figures: figures.py; profiles: profiling.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

from streamspace_testkit import Service, Stack, free_port, spawn
from streamspace_testkit.servers import PostgresServer

BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / "peer"
PEER_VENV = BENCH_DIR / ".peer-venv"
_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_bench_queries(path: Path = BENCH_DIR / "bench.sql") -> dict[str, str]:
    """The `-- name:` blocks of a .sql file (the same format as streamspace_common.db.load_queries)."""
    parts = _NAME_LINE.split(path.read_text())
    return {name: sql.strip() for name, sql in zip(parts[1::2], parts[2::2], strict=True)}


# --- completion NOTIFYs ------------------------------------------------------------------------


class Completions:
    """Times NOTIFYs on one LISTENing connection: per command (latency) and per batch (throughput).

    The time is taken in the callback, which asyncpg runs as soon as the notification is read.
    """

    def __init__(self) -> None:
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.expected: set[str] = set()
        self.seen = 0
        self.first = 0.0
        self.last = 0.0
        self.all_seen = asyncio.Event()
        # every completion's time by command id (a count per id beside it), while a bulk run records: its
        # ids come back from the API only after some may have completed already
        self.recorded: dict[str, float] | None = None
        self.repeats = 0  # completions of an id recorded already

    def on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        now = time.perf_counter()
        if self.recorded is not None:
            self.repeats += payload in self.recorded
            self.recorded[payload] = now
        waiter = self.waiters.pop(payload, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        if payload in self.expected:
            self.expected.discard(payload)
            self.seen += 1
            self.first = self.first or now
            self.last = now
            if not self.expected:
                self.all_seen.set()

    def wait_one(self, command_id: str) -> asyncio.Future[float]:
        """Register before creating the command, so a fast completion cannot be missed."""
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[command_id] = waiter
        return waiter

    def expect(self, command_ids: Iterable[str]) -> None:
        self.expected = set(command_ids)
        self.seen = 0
        self.first = 0.0
        self.last = 0.0
        self.all_seen.clear()


async def listen(dsn: str, channel: str, completions: Completions) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await conn.add_listener(channel, completions.on_notify)
    return conn


# --- CPU accounting ----------------------------------------------------------------------------


PidSource = Callable[[], Iterable[int]]


def _cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return None


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class CpuSplit:
    """CPU each group of processes used over a window, as % of one core; the rest of the machine too.

    A group's pids are asked for at the start and at the end (PostgreSQL backends come and go); a
    process born inside the window counts from zero.
    """

    groups: dict[str, PidSource]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _start_busy: float = 0.0
    _started: float = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()
        self._start_busy = _machine_busy()
        self._start = {name: self._read(source) for name, source in self.groups.items()}

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._started
        busy = _machine_busy() - self._start_busy
        split: dict[str, float] = {}
        for name, source in self.groups.items():
            before, after = self._start.get(name, {}), self._read(source)
            used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
            split[name] = round(100 * used / wall, 1)
        split["rest of the machine (other work, kernel)"] = round(100 * busy / wall - sum(split.values()), 1)
        split["machine total (2 cores = 200)"] = round(100 * busy / wall, 1)
        return split

    @staticmethod
    def _read(source: PidSource) -> dict[int, float]:
        readings = {pid: _cpu_seconds(pid) for pid in source()}
        return {pid: seconds for pid, seconds in readings.items() if seconds is not None}


def pids_named(name: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]


def backends_of(databases: list[str]) -> list[int]:
    """PostgreSQL backends serving these databases: their process title reads
    `postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE`."""
    wanted = set(databases)
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        words = " ".join(process.info["cmdline"] or []).split()
        if process.info["name"] == "postgres" and wanted.intersection(words[1:5]):
            found.append(process.pid)
    return found


def rss_mib(pid: int) -> float:
    return round(float(psutil.Process(pid).memory_info().rss) / 2**20, 1)


# --- processes -------------------------------------------------------------------------------


def start_process(stack: Stack, name: str, argv: list[str], env: dict[str, str], port: int = 0) -> Service:
    """A process the stack stops with the others (its log in the stack's log directory)."""
    log_path = stack.log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT)
    service = Service(name, process, port or free_port(), log_path)
    stack.services.append(service)
    return service


def spawn_sim_agents(
    stack: Stack, name: str, agents_file: Path, mode: str, extra: Sequence[str] = (), source: str | None = None
) -> Service:
    log_path = stack.log_dir / f"{name}.log"
    argv = [sys.executable, str(BENCH_DIR / "simagents.py"), str(agents_file), "--mode", mode, *extra]
    argv += ["--source", source] if source else []
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file)
    service = Service(name, process, 0, log_path)
    stack.services.append(service)
    return service


async def start_sim_agents(
    stack: Stack,
    name: str,
    agents_file: Path,
    mode: str,
    timeout: float,
    extra: Sequence[str] = (),
    source: str | None = None,
) -> tuple[Service, float]:
    """Start bench/simagents.py (`extra`: more of its flags; `source`: the local address to connect from);
    return it once every agent has its welcome, with the seconds that took."""
    service = spawn_sim_agents(stack, name, agents_file, mode, extra, source)
    process = service.process
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout)
    except TimeoutError:
        service.kill()
        raise AssertionError(f"{name}: agents not all connected within {timeout} s:\n{service.log()[-3000:]}") from None
    if not line:
        raise AssertionError(f"{name} exited:\n{service.log()[-3000:]}")
    return service, float(json.loads(line)["seconds"])


# --- the peer's venv -----------------------------------------------------------------------------


def ensure_peer_venv() -> tuple[Path | None, str]:
    """bench/.peer-venv built from bench/peer/requirements.txt (again when the file changes).

    Returns its python, or None and why not (pip could not reach the package registry, say).
    """
    requirements = PEER_DIR / "requirements.txt"
    stamp = hashlib.sha256(requirements.read_bytes()).hexdigest()
    python = PEER_VENV / "bin" / "python"
    stamp_file = PEER_VENV / ".installed"
    if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return python, "ready"
    base = getattr(sys, "_base_executable", None) or "python3"
    pip_install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [
        [base, "-m", "venv", "--clear", str(PEER_VENV)],
        [*pip_install, "--require-hashes", "-r", str(requirements)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return None, f"building bench/.peer-venv failed ({' '.join(step[:3])}...): {done.stderr.strip()[-500:]}"
    stamp_file.write_text(stamp)
    return python, "built"


# --- a PostgreSQL of the bench's own -----------------------------------------------------------------


class OwnPostgres:
    """A throwaway PostgreSQL 15 server (the test kit's recipe: streamspace_testkit.servers) with
    production's defaults, not the shared CI server's: autovacuum on (the machine's server runs with it off), fsync on,
    pg_stat_statements loaded, every autovacuum logged. Its WAL, statements and vacuums are the bench's
    alone, whatever else runs on the machine."""

    SETTINGS = (
        "listen_addresses=127.0.0.1",
        "max_connections=200",
        "shared_buffers=128MB",
        "fsync=on",
        "synchronous_commit=on",
        "autovacuum=on",
        "log_autovacuum_min_duration=0",
        "shared_preload_libraries=pg_stat_statements",
        "pg_stat_statements.track=all",
        "track_io_timing=on",
    )

    def __init__(self) -> None:
        self.server = PostgresServer()
        self.server.init()
        self.log_path = self.server.base / "postgres.log"
        argv = [str(Path("/usr/lib/postgresql/15/bin/postgres")), "-D", str(self.server.data)]
        argv += ["-p", str(self.server.port), "-k", str(self.server.data)]
        for setting in self.SETTINGS:
            argv += ["-c", setting]
        as_user = "postgres" if os.geteuid() == 0 else None
        with self.log_path.open("ab") as log_file:
            self.server.process = spawn(argv, stdout=subprocess.DEVNULL, stderr=log_file, user=as_user)  # dies with us
        self.server.wait_ready()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server.port}/{database}"

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def cpu_seconds(self) -> float:
        """CPU-seconds of the whole server so far: the postmaster, the processes it has forked and reaped
        (backends that ended: its children's times) and those alive (backends, WAL writer, checkpointer,
        autovacuum workers)."""
        postmaster = psutil.Process(self.pid)
        times = postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in postmaster.children():
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return float(total)

    def destroy(self) -> None:
        self.server.destroy()
