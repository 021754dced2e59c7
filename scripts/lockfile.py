"""What a lock file (requirements/*.txt, written by scripts/lock) pins, and whether a Python environment
holds exactly that: no package missing, none at another version, none the locks do not name.

    python scripts/lockfile.py [--python PYTHON] [--sync] LOCK [LOCK ...]

compares the environment of PYTHON (default: the one running this) with the union of the locks, our
own units (streamspace-*) aside; --sync first uninstalls what no lock names. Exit 1 on a difference.
scripts/install runs it on .venv; tests/unit/test_lock.py on .venv and inside each service's image.
Only the standard library and pip's own copy of `packaging` (every environment here has pip).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

OWN_UNITS = re.compile(r"^streamspace-")
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]*))?"
)

# Printed by the environment under test: every installed distribution and the values markers are read against.
PROBE = """
import importlib.metadata as md, json, os, platform, sys
dists = {d.metadata["Name"]: d.version for d in md.distributions()}
env = {
    "implementation_name": sys.implementation.name,
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "python_full_version": platform.python_version(),
    "sys_platform": sys.platform, "os_name": os.name, "platform_system": platform.system(),
    "platform_machine": platform.machine(), "platform_release": platform.release(),
    "implementation_version": platform.python_version(), "platform_version": platform.version(),
}
print(json.dumps({"dists": dists, "env": env}))
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> list[tuple[str, str, str | None]]:
    """(name, version, marker or None) of every requirement line of a lock."""
    found = []
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            marker = (match["marker"] or "").strip() or None
            found.append((normalize(match["name"]), match["version"], marker))
    return found


def expected(locks: list[Path], env: dict[str, str]) -> dict[str, str]:
    """name -> version that the locks pin for an environment (markers evaluated against it)."""
    from pip._vendor.packaging.markers import Marker

    wanted: dict[str, str] = {}
    for lock in locks:
        for name, version, marker in pins(lock):
            applies = marker is None or Marker(marker).evaluate(env)
            if applies and wanted.setdefault(name, version) != version:
                raise SystemExit(f"{lock}: {name}=={version}, another lock pins {wanted[name]}")
    return wanted


def probe(command: list[str]) -> dict[str, Any]:
    """The installed distributions and marker environment of the Python that `command` starts."""
    out = subprocess.run([*command, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def differences(locks: list[Path], command: list[str]) -> tuple[list[str], list[str]]:
    """(readable differences between an environment and the locks, names installed but not locked)."""
    found = probe(command)
    have = {normalize(name): version for name, version in found["dists"].items()}
    have = {name: version for name, version in have.items() if not OWN_UNITS.match(name)}
    want = expected(locks, found["env"])
    problems = [
        f"{name}: locked {version}, installed {have.get(name, 'nothing')}"
        for name, version in sorted(want.items())
        if have.get(name) != version
    ]
    extra = sorted(set(have) - set(want))
    problems += [f"{name}: installed {have[name]}, not in any lock" for name in extra]
    return problems, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="+", type=Path)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--sync", action="store_true", help="uninstall what no lock names first")
    args = parser.parse_args()
    problems, extra = differences(args.locks, [args.python])
    if args.sync and extra:
        subprocess.run([args.python, "-m", "pip", "uninstall", "--yes", "--quiet", *extra], check=True)
        problems, extra = differences(args.locks, [args.python])
    for problem in problems:
        print(f"lockfile: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
