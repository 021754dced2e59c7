"""The `local` platform: a session is a process on the agent's machine. Default in dev and tests.

The process runs the template's `command` (argv; `{port}` becomes a free port, `{python}` the agent's
interpreter) with PORT and STREAMSPACE_SESSION_ID in a minimal environment (the agent's own settings,
its token included, are not passed on), in its own process group, with a data directory as its
working directory and HOME. It must listen on 127.0.0.1:<port>, the session's endpoint, and on no
address but the loopback: once it listens (at create and at wake) the driver reads the TCP sockets of
the session's process group from /proc, and a session listening on any other address (0.0.0.0, a LAN
address, ::) is terminated and reported failed. The local platform is a single-user developer
platform (docs/security.md, "## Session isolation"): sessions are not isolated from each other or from
the agent's user, only kept off the network.

hibernate = SIGSTOP to the group, wake = SIGCONT (or a restart if the process is gone), stop = SIGTERM
to the group and SIGKILL after LOCAL_STOP_GRACE seconds, delete = stop and remove its directory.

Surviving an agent restart: each session has `LOCAL_SESSION_DIR/<session_id>/session.json` (pid, the
process's start time, port, wanted state, the CREATE_SESSION payload). A new agent process reads these
files, so its inventory still finds live processes and it can stop, hibernate and wake them. The
start time (from /proc) guards against a recycled pid being taken for the session's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import msgspec

from streamspace_common.actions import CreateSession, Endpoint, SessionInventoryItem, SessionReport

from .base import SessionDriver, SessionFailed, poll_until
from .settings import LocalSettings

HOST = "127.0.0.1"
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
WantedState = Literal["running", "hibernated", "stopped"]


class LocalRecord(msgspec.Struct, kw_only=True):
    """One session's state file."""

    session_id: str
    pid: int
    start_time: int  # clock ticks after boot, from /proc/<pid>/stat; 0 where /proc is missing
    port: int
    state: WantedState
    spec: CreateSession


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a process from /proc, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


TCP_LISTEN = "0A"
LOOPBACK_V6 = "00000000000000000000000001000000"
MAPPED_V4 = "0000000000000000FFFF0000"  # ::ffff:a.b.c.d, the IPv4 part after it


def is_loopback(hex_address: str) -> bool:
    """An address of /proc/net/tcp{,6} (little-endian hex words) in 127.0.0.0/8 or ::1."""
    if len(hex_address) == 8:
        return hex_address[6:8] == "7F"
    return hex_address == LOOPBACK_V6 or (hex_address.startswith(MAPPED_V4) and hex_address[30:32] == "7F")


def group_socket_inodes(pgid: int) -> set[str]:
    """The socket inodes held open by the processes of one process group."""
    inodes: set[str] = set()
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            links = [os.readlink(fd) for fd in stat_path.parent.joinpath("fd").iterdir()]
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        inodes.update(link[8:-1] for link in links if link.startswith("socket:["))
    return inodes


def readable(local: str) -> str:
    """/proc/net/tcp's `0100007F:1F90` as `127.0.0.1:8080` (IPv6 as `[::]:8080`)."""
    address, port = local.split(":")
    raw = bytes.fromhex(address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
    ip = ipaddress.ip_address(words)
    return f"{ip}:{int(port, 16)}" if ip.version == 4 else f"[{ip}]:{int(port, 16)}"


def exposed_listeners(pgid: int) -> list[str]:
    """`address:port` of every TCP socket the process group listens on beyond the loopback."""
    inodes = group_socket_inodes(pgid)
    exposed = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN and inode in inodes and not is_loopback(local.split(":")[0]):
                exposed.append(readable(local))
    return exposed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


class LocalDriver(SessionDriver):
    platform = "local"

    def __init__(self, settings: LocalSettings) -> None:
        super().__init__(settings.agent_id)
        default_dir = Path(tempfile.gettempdir()) / "streamspace-sessions" / (settings.agent_id or "agent")
        self.root = Path(settings.local_session_dir) if settings.local_session_dir else default_dir
        self.stop_grace = settings.local_stop_grace
        self.start_timeout = settings.local_start_timeout
        self.children: dict[str, subprocess.Popen[bytes]] = {}  # ours to reap; gone after a restart

    # --- state files -----------------------------------------------------------------------

    def _dir(self, session_id: str) -> Path:
        return self.root / session_id

    def _load(self, session_id: str) -> LocalRecord | None:
        try:
            return msgspec.json.decode(self._dir(session_id).joinpath("session.json").read_bytes(), type=LocalRecord)
        except (OSError, msgspec.DecodeError):
            return None

    def _save(self, record: LocalRecord) -> None:
        path = self._dir(record.session_id) / "session.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(msgspec.json.encode(record))
        os.replace(temporary, path)

    def _process_state(self, record: LocalRecord) -> str | None:
        """The process's state letter if the recorded process still lives, else None."""
        child = self.children.get(record.session_id)
        if child is not None and child.pid == record.pid:
            child.poll()  # reaps it if it exited, so it does not linger as a zombie
        stat = proc_stat(record.pid)
        if stat is None or stat[0] in "ZXx" or (record.start_time and stat[1] != record.start_time):
            return None
        return stat[0]

    # --- the process -----------------------------------------------------------------------

    async def _start(self, spec: CreateSession, port: int) -> LocalRecord:
        if not spec.command:
            raise SessionFailed("the local platform runs the template's command, and this template has none")
        directory = self._dir(spec.session_id)
        data = directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [part.replace("{port}", str(port)).replace("{python}", sys.executable) for part in spec.command]
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        env.update(spec.env)
        env.update({"PORT": str(port), "STREAMSPACE_SESSION_ID": spec.session_id, "HOME": str(data)})
        child = self._spawn(argv, env, directory)
        self.children[spec.session_id] = child
        stat = proc_stat(child.pid)
        record = LocalRecord(
            session_id=spec.session_id,
            pid=child.pid,
            start_time=stat[1] if stat else 0,
            port=port,
            state="running",
            spec=spec,
        )
        self._save(record)
        await self._until_listening(record)
        return record

    def _spawn(self, argv: list[str], env: dict[str, str], directory: Path) -> subprocess.Popen[bytes]:
        with (directory / "output.log").open("ab") as output:
            try:
                return subprocess.Popen(  # noqa: S603 (the template's command, no shell: the local platform runs what an admin's template says)
                    argv,
                    cwd=directory / "data",
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, signalled as one
                )
            except OSError as exc:
                raise SessionFailed(f"cannot start {argv[0]!r}: {exc}") from exc

    async def _until_listening(self, record: LocalRecord) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process_state(record) is None:
                raise SessionFailed(f"the process exited before listening on port {record.port}: {self._tail(record)}")
            try:
                _, writer = await asyncio.open_connection(HOST, record.port)
            except OSError:
                if time.monotonic() > deadline:
                    await self._terminate(record)
                    raise SessionFailed(
                        f"the process did not listen on port {record.port} within {self.start_timeout} s"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            exposed = exposed_listeners(record.pid)
            if exposed:
                await self._terminate(record)
                raise SessionFailed(
                    f"the process listens beyond 127.0.0.1 (on {', '.join(exposed)}): "
                    "the local platform keeps sessions on the loopback"
                )
            return

    def _tail(self, record: LocalRecord) -> str:
        try:
            return (self._dir(record.session_id) / "output.log").read_text(errors="replace")[-500:].strip()
        except OSError:
            return ""

    def _signal(self, record: LocalRecord, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signum)

    async def _terminate(self, record: LocalRecord) -> None:
        """SIGTERM the group (continued first, so a stopped process sees it), SIGKILL after the grace."""
        if self._process_state(record) is not None:
            self._signal(record, signal.SIGTERM)
            self._signal(record, signal.SIGCONT)
            await poll_until(lambda: self._process_state(record) is None, self.stop_grace)
        self._signal(record, signal.SIGKILL)  # the group: children the leader left behind go too
        child = self.children.pop(record.session_id, None)
        if child is not None:
            await asyncio.to_thread(child.wait)

    def _report(self, record: LocalRecord) -> SessionReport:
        endpoint = Endpoint(host=HOST, port=record.port) if record.state == "running" else None
        return SessionReport(session_id=record.session_id, state=record.state, endpoint=endpoint)

    def _known(self, session_id: str) -> LocalRecord:
        record = self._load(session_id)
        if record is None:
            raise SessionFailed(f"no session {session_id} on this agent")
        return record

    # --- the session operations ------------------------------------------------------------

    async def create(self, spec: CreateSession) -> SessionReport:
        record = self._load(spec.session_id)
        if record is not None and self._process_state(record) is not None:
            return await self.wake(spec.session_id)
        port = record.port if record is not None and port_is_free(record.port) else free_port()
        return self._report(await self._start(spec, port))

    async def wake(self, session_id: str) -> SessionReport:
        record = self._known(session_id)
        if self._process_state(record) is None:
            port = record.port if port_is_free(record.port) else free_port()
            return self._report(await self._start(record.spec, port))
        self._signal(record, signal.SIGCONT)
        record.state = "running"
        self._save(record)
        await self._until_listening(record)
        return self._report(record)

    async def hibernate(self, session_id: str) -> SessionReport:
        record = self._known(session_id)
        if self._process_state(record) is not None:
            self._signal(record, signal.SIGSTOP)
            await poll_until(lambda: self._process_state(record) in ("T", "t", None), 5, 0.01)
        record.state = "hibernated"
        self._save(record)
        return self._report(record)

    async def stop(self, session_id: str) -> SessionReport:
        record = self._known(session_id)
        await self._terminate(record)
        record.state = "stopped"
        self._save(record)
        return self._report(record)

    async def delete(self, session_id: str) -> SessionReport:
        record = self._load(session_id)
        if record is not None:
            await self._terminate(record)
        shutil.rmtree(self._dir(session_id), ignore_errors=True)
        return SessionReport(session_id=session_id, state="deleted")

    # --- what runs -------------------------------------------------------------------------

    async def workload_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(path.parent.name for path in self.root.glob("*/session.json"))

    async def inventory(self) -> list[SessionInventoryItem]:
        """Live processes, and sessions stopped or hibernated on purpose; a process that died behind
        the agent's back (its record says running) is left out: that session is not there any more."""
        items = []
        for session_id in await self.workload_ids():
            record = self._load(session_id)
            if record is None:
                continue
            state = self._process_state(record)
            if state is None and record.state == "running":
                continue
            if state in ("T", "t"):
                record.state = "hibernated"
            report = self._report(record)
            items.append(SessionInventoryItem(session_id=session_id, state=report.state, endpoint=report.endpoint))
        return items

    async def close(self) -> None:
        for child in self.children.values():
            child.poll()
