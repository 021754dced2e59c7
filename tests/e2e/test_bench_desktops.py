"""bench/desktops.py runs end to end on the `local` platform with 2 desktops (Xvnc and an xterm each, Debian's
Chromium with the viewer's noVNC): every desktop reaches its first frame in the browser, and the summary
holds every figure. How fast is never asserted (the machine is shared); that each step's time exists and
adds up is. Skipped, saying why, without Xvnc, xterm, Chromium or noVNC (scripts/desktop-packages).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSING = [name for name in ("Xvnc", "xterm", "chromium") if shutil.which(name) is None]
if not Path("/usr/share/novnc/core/rfb.js").is_file():
    MISSING.append("noVNC")


@pytest.mark.skipif(bool(MISSING), reason=f"missing {', '.join(MISSING)}: scripts/desktop-packages")
@pytest.mark.timeout(600)
def test_desktop_bench_sees_the_first_frame_of_each_desktop(tmp_path: Path) -> None:
    out = tmp_path / "desktops.json"
    argv = [sys.executable, str(ROOT / "bench" / "desktops.py"), "--platform", "local", "--count", "2", "--floor", "1"]
    done = subprocess.run([*argv, "--settle", "1", "--json", str(out)], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-10000:]
    summary = json.loads(out.read_text())
    assert summary["platform"] == "local" and summary["count"] == 2
    assert len(summary["load_average"]["before"]) == 3
    for name in ("one_at_a_time", "at_once"):
        figures = summary[name]
        assert figures["desktops"] == 2 and figures["failures"] == [], figures
        running, frame = figures["post_to_running_ms"], figures["post_to_first_frame_ms"]
        assert running["n"] == frame["n"] == 2
        assert 0 < running["p50"] < frame["p50"] <= frame["p99"]
        steps = figures["steps_ms"]
        assert all(steps[step]["n"] == 2 and steps[step]["p50"] >= 0 for step in steps), steps
        assert figures["memory_per_desktop_mib"]["n"] == 2
        assert 5 < figures["memory_per_desktop_mib"]["p50"] < 2000  # Xvnc and an xterm: tens of MiB
    for baseline in ("floor_start_to_rfb_ms", "driver_create_to_running_ms"):
        assert summary[baseline]["n"] == 1 and summary[baseline]["p50"] > 0
    assert summary["goals"]["2_at_once_without_a_failure"] is True
    assert "POST -> first frame" in done.stdout
