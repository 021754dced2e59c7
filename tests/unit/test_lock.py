"""The dependency locks (requirements/*.txt, docs/dependencies.md): current with their inputs, installed
exactly in .venv, and each service's lock its share of the services' lock. The images' contents are
checked against their locks in test_compose_real.py, where the images are built."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "dispatcher", "agent")


def load_lockfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockfile", ROOT / "scripts" / "lockfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lockfile = load_lockfile()


def lock(name: str) -> Path:
    return ROOT / "requirements" / f"{name}.txt"


def test_the_venv_holds_exactly_the_locks() -> None:
    problems, _ = lockfile.differences([lock("build"), lock("dev")], [sys.executable])
    assert problems == []


def test_a_package_no_lock_names_is_a_difference() -> None:
    """The check itself: against the build lock alone, the dev tools are extra and named."""
    problems, extra = lockfile.differences([lock("build")], [sys.executable])
    assert "pytest" in extra and "mypy" in extra
    assert any(p.startswith("pytest: installed ") and p.endswith("not in any lock") for p in problems)


def test_another_version_is_a_difference(tmp_path: Path) -> None:
    pinned = {name: version for name, version, _ in lockfile.pins(lock("dev"))}
    altered = lock("dev").read_text().replace(f"pytest=={pinned['pytest']} ", "pytest==0.0.1 ")
    (tmp_path / "dev.txt").write_text(altered)
    problems, _ = lockfile.differences([lock("build"), tmp_path / "dev.txt"], [sys.executable])
    assert problems == [f"pytest: locked 0.0.1, installed {pinned['pytest']}"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_lock_is_its_share_of_the_services_lock(service: str) -> None:
    everything = {(name, version) for name, version, _ in lockfile.pins(lock("services"))}
    share = {(name, version) for name, version, _ in lockfile.pins(lock(service))}
    assert share and share <= everything, share - everything


def test_the_services_lock_is_no_more_than_the_services_need() -> None:
    union = {name for service in SERVICES for name, _, _ in lockfile.pins(lock(service))}
    assert {name for name, _, _ in lockfile.pins(lock("services"))} == union


def test_every_lock_line_carries_hashes() -> None:
    for path in [*ROOT.glob("requirements/*.txt"), ROOT / "bench/peer/requirements.txt"]:
        text = path.read_text()
        assert lockfile.pins(path), path
        assert text.count("==") <= text.count("--hash=sha256:"), path
