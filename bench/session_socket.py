"""The agent's read from a session's socket: asyncio's StreamReader vs SessionSocket, CPU per GiB.

A sender process writes 512 MiB into a local TCP connection; this process reads it with
`StreamReader.read(64 KiB)` (what the agent did before) or `SessionSocket.read(64 KiB)` (what it does now:
no copy into a buffer and out again), on uvloop as the services run, interleaved, and prints the user
and system CPU-seconds of this process per GiB read. CPU, not MiB/s: it holds on a loaded machine.

    .venv/bin/python bench/session_socket.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys

import uvloop

from streamspace_agent.session_socket import SessionSocket

MIB = 512
LIMIT = 256 * 1024
SENDER = (
    "import socket, sys\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    f"for _ in range({MIB}): s.sendall(bytes(1 << 20))\n"
    "s.close()"
)


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def read_all(kind: str) -> tuple[float, float]:
    """User and system CPU-seconds per GiB of reading everything the sender writes."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    sender = await asyncio.create_subprocess_exec(sys.executable, "-c", SENDER, str(listener.getsockname()[1]))
    sock, _ = await loop.sock_accept(listener)
    listener.close()
    user, system = cpu()
    count = 0
    if kind == "StreamReader":
        reader, _ = await asyncio.open_connection(sock=sock)  # as the agent did: 64 KiB limit and reads
        while chunk := await reader.read(64 * 1024):
            count += len(chunk)
    else:
        _, protocol = await loop.connect_accepted_socket(lambda: SessionSocket(LIMIT), sock)
        while data := await protocol.read(64 * 1024):
            count += len(data)
    after_user, after_system = cpu()
    await sender.wait()
    if count != MIB << 20:
        raise RuntimeError(f"read {count} bytes of {MIB << 20}")
    gib = MIB / 1024
    return (after_user - user) / gib, (after_system - system) / gib


async def main(rounds: int) -> None:
    for _ in range(rounds):
        for kind in ("StreamReader", "SessionSocket"):
            user, system = await read_all(kind)
            print(f"{kind:14} user {user:.3f}  system {system:.3f}  total {user + system:.3f} CPU-s/GiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=4)
    uvloop.run(main(parser.parse_args().rounds))
