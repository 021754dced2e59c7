"""Packaging, with the real tools (slow: pip's resolver and wheel builds, so not in the fast tiers): the
locks are what their inputs resolve to, and a plain (not editable) install of each unit ships every
package and .sql file, as the images install it. The static checks of the locks and deployment files:
tests/unit/test_lock.py and tests/unit/test_deploy_static.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from unit.test_deploy_static import SERVICES
from unit.test_lock import ROOT


def test_locks_are_what_their_inputs_resolve_to() -> None:
    """A range or dependency changed in a pyproject or .in file without `scripts/lock` fails here."""
    done = subprocess.run(["bash", str(ROOT / "scripts/lock"), "--check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("unit", ["libs", *(f"services/{s}" for s in SERVICES), "tools"])
def test_non_editable_install_ships_every_subpackage(unit: str, tmp_path: Path) -> None:
    """Images install with plain `pip install DIR` (not editable), which editable dev installs hide:
    build the wheel and check it carries every package directory and every .sql file."""
    # Build from a clean copy, as `docker build` does: a dev checkout's *.egg-info would add files.
    source_copy = tmp_path / "src"
    shutil.copytree(ROOT / unit, source_copy, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(tmp_path), str(source_copy)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    source = ROOT / unit
    wanted = {
        str(path.relative_to(source))
        for pattern in ("*/**/__init__.py", "*/**/*.sql")
        for path in source.glob(pattern)
        if not {"build", "tests"} & set(path.relative_to(source).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    }
    assert wanted, f"no packages found under {unit}"
    missing = wanted - shipped
    assert not missing, f"the wheel of {unit} lacks {sorted(missing)}"
