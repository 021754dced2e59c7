"""The desktop session for the local platform: a real VNC server (TigerVNC's Xvnc) and an xterm on it.

    python -m streamspace_agent.desktop --port 5901 [--geometry 1024x768]

Xvnc listens on 127.0.0.1:<port> only, with no VNC authentication: the session is reached through the
gateway's stream, which checks the user (docs/streams.md), never directly. Xvnc picks a free X display
itself (-displayfd), so sessions on one machine never race for a display number. When `xterm` is
installed one runs on the display (something to see and type into). The local driver signals the
whole process group, so stopping or hibernating the session reaches Xvnc and the xterm alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys


def start_xvnc(port: int, geometry: str) -> tuple[subprocess.Popen[bytes], str]:
    """Xvnc on 127.0.0.1:port, and the display (":N") it chose."""
    xvnc = shutil.which("Xvnc")
    if xvnc is None:
        sys.exit("Xvnc is not installed (Debian: tigervnc-standalone-server; scripts/desktop-packages)")
    read_end, write_end = os.pipe()
    argv = [xvnc, "-displayfd", str(write_end), "-rfbport", str(port), "-localhost", "-interface", "127.0.0.1"]
    argv += ["-SecurityTypes", "None", "-geometry", geometry, "-depth", "24", "-AlwaysShared", "-nolisten", "tcp"]
    server = subprocess.Popen(argv, pass_fds=(write_end,))  # noqa: S603 (fixed flags, no shell)
    os.close(write_end)
    with os.fdopen(read_end) as displays:
        number = displays.readline().strip()
    if not number:
        sys.exit(f"Xvnc exited before choosing a display (status {server.wait()})")
    return server, f":{number}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5901")))
    parser.add_argument("--geometry", default="1024x768")
    args = parser.parse_args(argv)
    server, display = start_xvnc(args.port, args.geometry)
    xterm = shutil.which("xterm")
    if xterm is not None:
        subprocess.Popen([xterm, "-geometry", "100x30+10+10"], env={**os.environ, "DISPLAY": display})  # noqa: S603
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    sys.exit(server.wait())


if __name__ == "__main__":
    main()
