"""What the browser tests share: where screenshots go, how Chromium starts headless, and which desktop
tools (Xvnc, xterm, Chromium, noVNC) this machine lacks (scripts/desktop-packages installs them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MISSING_DESKTOP_TOOLS = [
    name
    for name, present in (
        ("Xvnc", shutil.which("Xvnc")),
        ("xterm", shutil.which("xterm")),
        ("chromium", shutil.which("chromium")),
        ("noVNC", Path("/usr/share/novnc/core/rfb.js").is_file()),
    )
    if not present
]
