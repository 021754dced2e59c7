"""A desktop in the browser from `docker compose up`, on a real Docker Engine (issue 24, "Done means").

compose.yaml as shipped, through test_compose_real's harness (its own project name, agent id, sessions
network and free ports; `down -v` and the sessions' leftovers removed at the end): the agents run the
docker platform on this engine and compose builds streamspace/desktop:dev (images/desktop). Then, as
people would: an administrator from `docker compose exec`, the sample templates; a user logs into the
console on gateway-b in headless Chromium (Debian's, through Playwright), creates a `desktop`, opens
the viewer (noVNC connected through the agent's tunnel), types `touch <file>` into the desktop's
terminal, and the file is read inside the session's container with `docker exec`; the viewer's
"resize the desktop to the window" changes the remote screen's size (RandR); hibernate (the
container paused or stopped, as docs/drivers.md says), wake (the viewer connects again, the file is
still there: the per-session volume), delete (container and volume gone). Screenshots of the console,
the admin area and the desktop go to test-artifacts/ (TEST_ARTIFACTS overrides; git-ignored).

Skipped, saying why, when no engine can start, or Chromium or Playwright is missing. The first run
builds the images (the desktop's Debian packages: a few minutes); later ones reuse the layer cache.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.test_compose_real import AGENT_ID, Stack, compose_up, http, wait_until
from streamspace_testkit.browser import ARTIFACTS, BROWSER_ARGS

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]


TEMPLATE = "desktop"
WAIT_MS = 120_000  # a desktop container starting on a loaded 2-core machine


def browser_missing() -> str | None:
    if shutil.which("chromium") is None:
        return "Debian's chromium is missing (scripts/desktop-packages installs it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (scripts/install)"
    return None


@pytest.fixture(scope="module")
def desktop_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if (missing := browser_missing()) is not None:
        pytest.skip(missing)
    with compose_up(tmp_path_factory.mktemp("desktop"), "ssdesk", AGENT_ID) as stack:
        yield stack


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=60)


def where_the_desktop_is(session_id: str) -> str:
    """What a failed typing check needs: the session's home and files, and every desktop container."""
    home = docker("exec", f"ss-{session_id}", "sh", "-c", "hostname; echo HOME=$HOME; ls -la /data /data/home /tmp")
    desktops = docker("ps", "-a", "--filter", "ancestor=streamspace/desktop:dev", "--format", "{{.Names}} {{.ID}}")
    return f"in ss-{session_id}:\n{home.stdout}{home.stderr}\ndesktop containers:\n{desktops.stdout}"


def container_state(session_id: str) -> str | None:
    """The engine's state of the session's container (running, paused, exited...), None when gone."""
    result = docker("inspect", "-f", "{{.State.Status}}", f"ss-{session_id}")
    return result.stdout.strip() if result.returncode == 0 else None


def volume_exists(session_id: str) -> bool:
    return docker("volume", "inspect", f"ss-{session_id}-data").returncode == 0


def admin_and_user(stack: Stack) -> tuple[tuple[str, str], tuple[str, str]]:
    """An administrator made with `docker compose exec` (as docs/deploy.md says), the sample templates,
    and a plain user the administrator creates through the API."""
    admin = f"admin-{uuid.uuid4().hex[:6]}"
    out = stack.compose.exec("gateway-a", "streamspace-admin", "user", "create", admin, "--admin")
    admin_password = out.strip().splitlines()[-1]
    stack.compose.exec("gateway-a", "streamspace-admin", "templates", "install-samples")
    status, body = http(
        "POST", stack.urls["gateway-b"] + "/api/v1/auth/login", body={"username": admin, "password": admin_password}
    )
    assert status == 200, body
    stack.token = body["token"]
    user, password = f"user-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    stack.call("gateway-a", "POST", "/api/v1/users", {"username": user, "password": password}, expect=201)
    return (admin, admin_password), (user, password)


def new_page(browser: Any, problems: list[str]) -> Any:
    """A page in a context of its own, whose script errors and failed requests are noted in `problems`."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url} {request.failure}"))
    return page


def log_in(page: Any, base: str, username: str, password: str) -> None:
    page.goto(base + "/")
    page.fill("#login input[name=username]", username)
    page.fill("#login input[name=password]", password)
    page.click("#login button[type=submit]")


def open_viewer(page: Any, base: str, session_id: str) -> Any:
    """The console's Open button, then noVNC connected; the desktop's canvas."""
    row = f"[data-session-id='{session_id}']"
    page.goto(base + "/")
    page.click(f"{row}[data-state=running] button[data-action=open]", timeout=WAIT_MS)
    # a selector, not a JS predicate: the page's CSP forbids eval (docs/security.md)
    page.wait_for_selector("#status:text-is('connected')", timeout=60_000)
    return page.locator("#screen canvas")


def test_a_desktop_from_compose_in_the_browser(desktop_stack: Stack) -> None:
    from playwright.sync_api import sync_playwright

    stack = desktop_stack
    base = stack.urls["gateway-b"]
    (admin, admin_password), (user, password) = admin_and_user(stack)
    wait_until(stack.ha_pair, 90, "both agent replicas connected, one active")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    marker = f"typed-{uuid.uuid4().hex[:8]}"
    timings: dict[str, float] = {}
    problems: list[str] = []  # what the pages reported going wrong: printed when a step fails
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS)
        try:
            # The administrator's area: agents (the docker platform), users, templates, commands.
            admin_page = new_page(browser, problems)
            log_in(admin_page, base, admin, admin_password)
            admin_page.click("[data-nav=admin]")
            admin_page.wait_for_selector(f"text={AGENT_ID}", timeout=30_000)
            admin_page.screenshot(path=str(ARTIFACTS / "compose-admin.png"), full_page=True)

            page = new_page(browser, problems)
            log_in(page, base, user, password)
            page.wait_for_selector(f"#templates option[value={TEMPLATE}]", state="attached")
            page.select_option("#templates", TEMPLATE)
            page.fill("#create input[name=name]", "my desktop")
            started = time.monotonic()
            page.click("#create button[type=submit]")
            page.wait_for_selector("[data-session-id][data-state=running]", timeout=WAIT_MS)
            timings["create -> running in the console"] = time.monotonic() - started
            session_id = page.get_attribute("[data-session-id]", "data-session-id")
            assert session_id
            assert container_state(session_id) == "running" and volume_exists(session_id)
            page.screenshot(path=str(ARTIFACTS / "compose-console.png"), full_page=True)

            started = time.monotonic()
            canvas = open_viewer(page, base, session_id)
            timings["open -> connected"] = time.monotonic() - started
            page.wait_for_timeout(2000)  # the terminal mapped and focused by the window manager
            canvas.click(position={"x": 300, "y": 200})  # into the terminal at +40+40
            page.keyboard.type(f"touch {marker}", delay=40)
            page.keyboard.press("Enter")
            typed = f"/data/home/{marker}"
            try:
                wait_until(lambda: docker("exec", f"ss-{session_id}", "test", "-f", typed).returncode == 0, 30, typed)
            except AssertionError:
                print(where_the_desktop_is(session_id))
                raise
            owner = docker("exec", f"ss-{session_id}", "stat", "-c", "%u", typed).stdout.strip()
            assert owner == "10001", f"the desktop runs as {owner}, not the image's non-root user"
            memory = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", f"ss-{session_id}").stdout.strip()
            page.wait_for_timeout(1000)  # the next frame shows the command line
            canvas.screenshot(path=str(ARTIFACTS / "compose-desktop.png"))
            page.screenshot(path=str(ARTIFACTS / "compose-viewer-page.png"))

            # Remote resize (RandR): the viewer asks for its window's size and Xvnc changes the screen's;
            # noVNC's canvas is as large as the remote screen (scaling is done by style only).
            # The page is as wide as the screen (1280) and less high: the height changes.
            assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("1280", "800")
            page.select_option("#scaling", "remote")
            page.wait_for_selector("#screen canvas:not([height='800'])", timeout=30_000)
            resized = f"{canvas.get_attribute('width')}x{canvas.get_attribute('height')}"
            page.select_option("#scaling", "scale")

            # Hibernate: the console's button; the container is paused or stopped, its volume kept.
            row = f"[data-session-id='{session_id}']"
            page.goto(base + "/")
            page.click(f"{row} button[data-action=hibernate]")
            page.wait_for_selector(f"{row}[data-state=hibernated]", timeout=WAIT_MS)
            hibernated = container_state(session_id)
            assert hibernated in {"paused", "exited"}, hibernated
            assert volume_exists(session_id)

            # Wake: running again, the viewer connects again, the typed file is still there.
            page.click(f"{row} button[data-action=wake]")
            page.wait_for_selector(f"{row}[data-state=running]", timeout=WAIT_MS)
            started = time.monotonic()
            open_viewer(page, base, session_id)
            timings["wake: open -> connected"] = time.monotonic() - started
            assert docker("exec", f"ss-{session_id}", "test", "-f", typed).returncode == 0

            # Delete: gone from the console, then the container and its volume from the engine.
            page.goto(base + "/")
            page.click(f"{row} button[data-action=delete]")
            page.wait_for_selector(row, state="detached", timeout=WAIT_MS)
            wait_until(
                lambda: container_state(session_id) is None and not volume_exists(session_id),
                90,
                "the session's container and volume removed",
                interval=1,
            )
        except BaseException:
            for index, context in enumerate(browser.contexts):
                for tab in context.pages:
                    tab.screenshot(path=str(ARTIFACTS / f"compose-failure-{index}.png"))
            print("the pages reported:", *problems, sep="\n  ")
            raise
        finally:
            browser.close()
    print(f"remote resize: 1280x800 -> {resized}; hibernated container: {hibernated}; desktop memory: {memory}")
    print(f"timings (s): { {k: round(v, 1) for k, v in timings.items()} }")
    print(f"screenshots: {ARTIFACTS}/compose-console.png, compose-admin.png, compose-desktop.png")
