"""The test kit's process safety net, for real: a python that started children through the kit is
SIGKILLed (as a killed pytest would be), and its children must not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamspace_testkit import processes, wait_until

# The owner: starts its child, prints the child's pid, then waits to be killed. It loads the safety net's
# module alone, not the whole kit (whose imports take seconds on a loaded machine).
OWNER = """
import importlib.util, subprocess, sys, time
spec = importlib.util.spec_from_file_location("processes", sys.argv[2])
processes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(processes)
if sys.argv[1] == "spawn":
    child = processes.spawn(["sleep", "300"])
elif sys.argv[1] == "register":  # a child the kernel will not kill with us (as a node started -detached)
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    processes.register(child.pid)
else:  # a local session, as an agent leaves it: its own group, its pid in LOCAL_SESSION_DIR/<id>/session.json
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    session = processes.Path(sys.argv[3]) / "s-1"
    session.mkdir(parents=True)
    (session / "session.json").write_text(processes.json.dumps({"pid": child.pid}))
    processes.register_sessions(session.parent)
print(child.pid, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet is dead: in a container pid 1 may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def start_owner(how: str, *extra: str) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-c", OWNER, how, processes.__file__, *extra]
    owner = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    assert alive(child)
    return owner, child


async def test_a_child_dies_with_its_sigkilled_parent() -> None:
    owner, child = start_owner("spawn")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    await wait_until(lambda: not alive(child), timeout=10, what=f"child {child} gone")


@pytest.mark.parametrize("how", ["register", "sessions"])
async def test_the_sweep_kills_what_a_dead_run_registered_and_removes_its_pid_file(how: str, tmp_path: Path) -> None:
    owner, child = start_owner(how, str(tmp_path / "sessions"))
    pid_file = processes.pid_file(owner.pid)
    assert pid_file.exists()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert alive(child)  # detached: nothing but the sweep ends it
    try:
        assert child in processes.sweep_stale()
        await wait_until(lambda: not alive(child), timeout=10, what=f"child {child} gone")
        assert not pid_file.exists()
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


async def test_the_sweep_leaves_a_live_runs_children_alone() -> None:
    owner, child = start_owner("register")
    try:
        processes.sweep_stale()
        assert alive(child) and processes.pid_file(owner.pid).exists()
    finally:
        owner.kill()
        owner.wait()
        processes.sweep_stale()
    await wait_until(lambda: not alive(child), timeout=10, what=f"child {child} gone")
