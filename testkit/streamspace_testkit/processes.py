"""The process safety net: no child of a test run outlives it, even when pytest is SIGKILLed.

Every process the kit starts goes through `spawn`: it runs in a process group of its own, asks the kernel
for SIGKILL when its parent dies (PR_SET_PDEATHSIG), and its group is written to this run's pid file
(`<tmp>/streamspace-testkit/<pid>-<start time>.pids`). Processes that detach on their own (a RabbitMQ
node started with -detached) are added with `register`; an agent's LOCAL_SESSION_DIR with
`register_sessions` (local sessions run in process groups of their own and outlive a killed agent, by
design). `release()`, at the end of a run, kills what is left; `sweep_stale()`, when a run starts, kills
everything a pid file lists whose owner is gone, and removes the file: the net for what PR_SET_PDEATHSIG
misses (a detached child, one that changed its user, an agent's sessions).
The kernel sends PR_SET_PDEATHSIG when the *thread* that started the child ends: start children from
the main thread or a long-lived one (asyncio's default executor keeps its threads).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PID_DIR = Path(tempfile.gettempdir()) / "streamspace-testkit"
_libc = ctypes.CDLL(None, use_errno=True)


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_file(pid: int | None = None) -> Path:
    """The pid file of the process `pid` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return PID_DIR / f"{pid}-{_start_time(pid)}.pids"


def register(pgid: int) -> None:
    """Add a process group (its leader's pid) to this process's pid file, swept once this process is gone.
    The leader's start time goes with it, so a sweep never signals a reused pid."""
    if pgid == os.getpgrp():
        raise ValueError(f"process group {pgid} is this process's own: it cannot be swept")
    PID_DIR.mkdir(parents=True, exist_ok=True)
    with pid_file().open("a") as file:
        file.write(f"{pgid} {_start_time(pgid)}\n")


def register_sessions(directory: Path) -> None:
    """Add a local driver's session directory (LOCAL_SESSION_DIR) to this process's pid file."""
    PID_DIR.mkdir(parents=True, exist_ok=True)
    with pid_file().open("a") as file:
        file.write(f"sessions {directory}\n")


def kill_sessions(sessions: Path) -> list[int]:
    """End the processes of the local sessions under `sessions` (LOCAL_SESSION_DIR): they run in process
    groups of their own and outlive their killed agent. A session removed or rewritten meanwhile is skipped."""
    killed: list[int] = []
    for state in sessions.glob("*/session.json"):
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, ProcessLookupError, PermissionError):
            pgid = int(json.loads(state.read_text())["pid"])
            os.killpg(pgid, signal.SIGKILL)
            killed.append(pgid)
    return killed


def _die_with_parent() -> None:
    """Runs in the child between fork and exec."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(args: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen in a process group of its own that dies with its parent and is registered."""
    process: subprocess.Popen[bytes] = subprocess.Popen(
        args, start_new_session=True, preexec_fn=_die_with_parent, **popen
    )
    register(process.pid)
    return process


def kill_group(process: subprocess.Popen[Any] | None, timeout: float = 30) -> None:
    """SIGKILL a spawned process and everything in its group; reap it."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # not a group leader (started without spawn): the process alone
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    except PermissionError:
        pass
    process.wait(timeout=timeout)


def _kill_listed(path: Path) -> list[int]:
    """SIGKILL every group a pid file lists (but a reused pid), then remove the file."""
    killed: list[int] = []
    for line in path.read_text().splitlines():
        if line.startswith("sessions "):
            killed += kill_sessions(Path(line.removeprefix("sessions ")))
            continue
        pgid, _, leader_started = line.partition(" ")
        now = _start_time(int(pgid))
        if (now is not None and now != leader_started) or int(pgid) == os.getpgrp():
            continue  # the pid was reused by a process of someone else's, or the group is ours
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pgid), signal.SIGKILL)
            killed.append(int(pgid))
    path.unlink(missing_ok=True)
    return killed


def sweep_stale() -> list[int]:
    """Kill the process groups of every pid file whose owner is dead; return the groups signalled."""
    killed: list[int] = []
    for path in PID_DIR.glob("*.pids") if PID_DIR.is_dir() else ():
        owner, _, started = path.stem.partition("-")
        if not (owner.isdigit() and _start_time(int(owner)) == started):
            killed += _kill_listed(path)
    return killed


def release() -> list[int]:
    """At the end of a run: kill what is left of this process's children and remove its pid file."""
    path = pid_file()
    return _kill_listed(path) if path.exists() else []
