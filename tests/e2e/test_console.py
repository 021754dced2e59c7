"""The web console and the viewer in a real browser (docs/streams.md "The web console"): headless Chromium
(Debian's, driven by Playwright with `executable_path`) against two real gateways, a dispatcher and a
`local` agent whose desktop sessions are real Xvnc servers with an xterm. The browser always uses gateway
B; the agent is connected to A, so every stream and thumbnail crosses replicas.

Also the session `name` through the API (docs/sessions.md "Names"). Screenshots of the console, the admin
area and the viewer go to test-artifacts/ (git-ignored; `TEST_ARTIFACTS` moves them).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from streamspace_testkit import Api, RunEnv, Service, Stack, kill_sessions, new_account, wait_only_placeable, wait_until
from streamspace_testkit.browser import ARTIFACTS, BROWSER_ARGS
from streamspace_testkit.browser import MISSING_DESKTOP_TOOLS as MISSING
from streamspace_tools.admin import create_agent_token

DESKTOP = ["{python}", "-m", "streamspace_agent.desktop", "--port", "{port}"]

needs_desktop = pytest.mark.skipif(bool(MISSING), reason=f"missing {', '.join(MISSING)}: scripts/desktop-packages")
TAG = uuid.uuid4().hex[:6]
DESKTOP_T = f"console-desktop-{TAG}"  # names of this module's own: the run's database is shared
CARD = "[data-session-id='{}']"


class ConsoleStack:
    def __init__(self, stack: Stack, a: Service, b: Service, agent_id: str, sessions: Path, admin: Api) -> None:
        self.stack, self.a, self.b, self.agent_id, self.sessions, self.admin = stack, a, b, agent_id, sessions, admin


@pytest.fixture(scope="module")
async def console(
    test_env: RunEnv, db: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ConsoleStack]:
    base = tmp_path_factory.mktemp("console")
    stack = Stack(test_env, base)
    a = stack.gateway(f"gateway-ca-{TAG}", SESSION_QUOTA="100")
    b = stack.gateway(f"gateway-cb-{TAG}", SESSION_QUOTA="100")
    dispatcher = stack.dispatcher(f"dispatcher-c-{TAG}")
    await stack.ready(a, b, dispatcher)
    agent_id = f"console-agent-{test_env.run_id}-{TAG}"
    sessions = base / "sessions"
    token = await create_agent_token(test_env.database_url, agent_id)
    agent = stack.agent(agent_id, token, [a, b], LOCAL_SESSION_DIR=str(sessions))
    await stack.ready(agent)
    await wait_only_placeable(db, {agent_id})  # the console creates without an agent_id
    account = await new_account(test_env.database_url, f"console-admin-{TAG}", admin=True)
    admin = Api(a.url, account.token)
    template = {"name": DESKTOP_T, "command": DESKTOP, "platforms": ["local"], "description": "a desktop"}
    await admin.call("POST", "/api/v1/templates", template, expect=201)
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    yield ConsoleStack(stack, a, b, agent_id, sessions, admin)
    stack.stop_all()
    kill_sessions(sessions)
    print(stack.dump_logs())


async def new_person(console: ConsoleStack, prefix: str) -> tuple[str, str, Api]:
    """A user made through the API: their username, password and their own view of the API."""
    username, password = f"{prefix}-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    await console.admin.call("POST", "/api/v1/users", {"username": username, "password": password}, expect=201)
    _, login = await Api(console.a.url, "").call(
        "POST", "/api/v1/auth/login", {"username": username, "password": password}, expect=200
    )
    return username, password, Api(console.a.url, login["token"])


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if MISSING:
        pytest.skip(f"missing {', '.join(MISSING)}: scripts/desktop-packages installs them")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS)
        yield chromium
        await chromium.close()


async def logged_in(browser: Any, console: ConsoleStack, username: str, password: str) -> Any:
    """A new page on gateway B's console, logged in; it records what the Content-Security-Policy refused."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.refused = []
    page.on("console", lambda m: page.refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("dialog", lambda dialog: None)  # each test that expects one accepts it itself
    page.problems = []  # said when a wait fails: what the page could not load or run
    page.on("pageerror", lambda error: page.problems.append(f"error: {error}"))
    page.on("requestfailed", lambda request: page.problems.append(f"failed: {request.url} {request.failure}"))
    await page.goto(console.b.url + "/")
    try:
        await page.wait_for_selector("#login:not([hidden])", timeout=30_000)
    except Exception as exc:
        raise AssertionError(f"no login form: {page.problems}") from exc
    await page.fill("#login input[name=username]", username)
    await page.fill("#login input[name=password]", password)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#console:not([hidden])")
    return page


async def actions_of(page: Any, session_id: str) -> list[str]:
    buttons = page.locator(f"{CARD.format(session_id)} [data-action]")
    return [str(await buttons.nth(i).get_attribute("data-action")) for i in range(await buttons.count())]


async def until_card_state(page: Any, session_id: str, state: str, timeout: float = 40) -> None:
    try:
        await page.wait_for_selector(f"{CARD.format(session_id)}[data-state={state}]", timeout=timeout * 1000)
    except Exception as exc:
        card = await page.locator(CARD.format(session_id)).get_attribute("data-state", timeout=1000)
        raise AssertionError(f"card {session_id} not {state} within {timeout} s: {card=}, {page.problems}") from exc


# --- the session name through the API ----------------------------------------------------------------


async def test_a_session_name_is_kept_and_shown_in_every_view(console: ConsoleStack) -> None:
    _, _, user = await new_person(console, "namer")
    made = await user.create(DESKTOP_T, name="Work desktop 1", agent_id=console.agent_id)
    assert made["name"] == "Work desktop 1"
    assert (await user.session(made["id"]))["name"] == "Work desktop 1"
    _, page = await user.call("GET", "/api/v1/sessions", expect=200)
    assert [s["name"] for s in page["sessions"]] == ["Work desktop 1"]
    unnamed = await user.create(DESKTOP_T, agent_id=console.agent_id)
    assert unnamed["name"] is None
    for session in (made, unnamed):
        await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)


@pytest.mark.parametrize("name", ["", " leading", "trailing ", "a/b", "new\nline", "x" * 65, "é", 7])
async def test_a_bad_session_name_is_refused_naming_the_field(console: ConsoleStack, name: Any) -> None:
    status, body = await console.admin.call("POST", "/api/v1/sessions", {"template": DESKTOP_T, "name": name})
    assert status == 400, body
    assert body["error"]["field"] == "name", body
    assert "unknown field" not in body["error"]["message"], body  # a known field, refused for its value


# --- the console -------------------------------------------------------------------------------------


@needs_desktop
@pytest.mark.timeout(240)
async def test_console_creates_a_named_desktop_and_drives_it_with_the_buttons(
    console: ConsoleStack, browser: Any
) -> None:
    """Create with a name; the card shows name, template, state, age and activity, only the actions its
    state allows, and a thumbnail taken through the stream; hibernate, wake and delete by its buttons."""
    username, password, user = await new_person(console, "carder")
    page = await logged_in(browser, console, username, password)
    name = f"Desk {TAG}"
    await page.wait_for_selector(f"#templates option[value='{DESKTOP_T}']", state="attached")
    await page.select_option("#templates", DESKTOP_T)
    await page.fill("#create input[name=name]", name)
    started = time.monotonic()
    await page.click("#create button[type=submit]")
    card = page.locator("[data-session-id]").first
    await card.wait_for()
    session_id = str(await card.get_attribute("data-session-id"))
    assert (await user.session(session_id))["name"] == name
    await until_card_state(page, session_id, "running")
    running = time.monotonic()
    selector = CARD.format(session_id)
    assert await page.text_content(f"{selector} [data-field=name]") == name
    assert await page.text_content(f"{selector} [data-field=template]") == DESKTOP_T
    assert await page.text_content(f"{selector} [data-field=state]") == "running"
    assert "ago" in str(await page.text_content(f"{selector} [data-field=age]"))
    assert await actions_of(page, session_id) == ["open", "hibernate", "stop", "delete"]
    # the thumbnail: a view-only stream through gateway B, its canvas drawn into an image
    thumbnail = page.locator(f"{selector} [data-field=thumbnail] img")
    await thumbnail.wait_for(timeout=30_000)
    print(f"create -> card running: {running - started:.2f} s; -> thumbnail: {time.monotonic() - started:.2f} s")
    assert str(await thumbnail.get_attribute("src")).startswith("data:image/png;base64,")
    assert "stream_open" in console.b.log()  # taken through the stream path, on the replica it was asked
    await page.screenshot(path=str(ARTIFACTS / "console-sessions.png"))

    await page.click(f"{selector} button[data-action=hibernate]")
    await until_card_state(page, session_id, "hibernated")
    assert await actions_of(page, session_id) == ["wake", "stop", "delete"]
    assert await page.locator(f"{selector} [data-field=thumbnail] img").count() in (0, 1)  # last one kept
    await page.click(f"{selector} button[data-action=wake]")
    await until_card_state(page, session_id, "running")
    await page.click(f"{selector} button[data-action=delete]")
    await page.wait_for_selector(selector, state="detached", timeout=30_000)
    status, _ = await user.call("GET", f"/api/v1/sessions/{session_id}")
    assert status == 404
    assert page.refused == []
    await page.context.close()


# --- the admin area ----------------------------------------------------------------------------------


@needs_desktop
@pytest.mark.timeout(180)
async def test_admin_area_lists_and_manages(console: ConsoleStack, browser: Any, test_env: RunEnv) -> None:
    """Agents (platform, load, HA instances), users, templates and recent commands; create a user, disable
    them, reset their password, edit a template: each checked through the API afterwards."""
    admin = await new_account(test_env.database_url, f"adm-{uuid.uuid4().hex[:6]}", admin=True)
    admin_name = admin.username
    made = await Api(console.a.url, admin.token).create(DESKTOP_T, name="Admin desk", agent_id=console.agent_id)
    page = await logged_in(browser, console, admin_name, admin.password)
    await page.click("[data-nav=admin]")
    await page.wait_for_selector("#admin:not([hidden])")
    agent_row = f"#agents tr[data-agent-id='{console.agent_id}']"
    await page.wait_for_selector(agent_row)
    agent_text = str(await page.text_content(agent_row))
    assert "online" in agent_text and "local" in agent_text, agent_text
    assert "active on gateway-ca-" in str(await page.text_content(f"{agent_row} [data-field=instances]"))
    assert "1 session(s)" in str(await page.text_content(f"{agent_row} [data-field=load]"))
    await page.wait_for_selector(f"#users tr[data-username='{admin_name}']")
    await page.wait_for_selector(f"#template-list tr[data-template='{DESKTOP_T}']")
    command = await page.text_content(f"#commands tr[data-command-session='{made['id']}']")
    assert "CREATE_SESSION" in str(command), command

    # create a user, disable them, reset their password
    newcomer, first_password = f"newcomer-{TAG}", f"pw-{uuid.uuid4().hex}"
    await page.fill("#user-create input[name=username]", newcomer)
    await page.fill("#user-create input[name=password]", first_password)
    await page.click("#user-create button[type=submit]")
    user_row = f"#users tr[data-username='{newcomer}']"
    await page.wait_for_selector(user_row)
    assert await login_status(console, newcomer, first_password) == 200
    second_password = f"pw-{uuid.uuid4().hex}"
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept(second_password)))
    await page.click(f"{user_row} button[data-action=reset-password]")
    await wait_until(lambda: ok_login(console, newcomer, second_password), timeout=15)
    assert await login_status(console, newcomer, first_password) == 401
    await page.click(f"{user_row} button[data-action=disable]")
    await page.wait_for_selector(f"{user_row} [data-field=status]:text-is('disabled')")
    assert await login_status(console, newcomer, second_password) in (401, 403)

    # edit a template
    await page.click(f"#template-list tr[data-template='{DESKTOP_T}'] button[data-action=edit]")
    await page.fill("#template-edit input[name=description]", f"edited {TAG}")
    await page.fill("#template-edit input[name=memory]", "320")
    await page.click("#template-edit button[type=submit]")
    edited = f"#template-list tr[data-template='{DESKTOP_T}'] [data-field=description]"
    await page.wait_for_selector(f"{edited}:text-is('edited {TAG}')")
    _, template = await console.admin.call("GET", f"/api/v1/templates/{DESKTOP_T}", expect=200)
    assert template["description"] == f"edited {TAG}" and template["memory"] == 320
    assert template["command"] == DESKTOP and template["platforms"] == ["local"]  # the rest kept
    await page.screenshot(path=str(ARTIFACTS / "console-admin.png"), full_page=True)
    assert page.refused == []
    await page.context.close()
    await console.admin.call("DELETE", f"/api/v1/sessions/{made['id']}", expect=204)


async def login_status(console: ConsoleStack, username: str, password: str) -> int:
    body = {"username": username, "password": password}
    status, _ = await Api(console.b.url, "").call("POST", "/api/v1/auth/login", body)
    return status


async def ok_login(console: ConsoleStack, username: str, password: str) -> bool | None:
    return True if await login_status(console, username, password) == 200 else None


@needs_desktop
async def test_a_user_does_not_see_the_admin_area(console: ConsoleStack, browser: Any, test_env: RunEnv) -> None:
    """The same page an administrator gets with the admin area's link shows a user none, even at #admin."""
    admin = await new_account(test_env.database_url, f"adm-{uuid.uuid4().hex[:6]}", admin=True)
    page = await logged_in(browser, console, admin.username, admin.password)
    await page.wait_for_selector("[data-nav=admin]", state="visible")
    await page.context.close()
    username, password, _ = await new_person(console, "plain")
    page = await logged_in(browser, console, username, password)
    await page.wait_for_selector("#who:has-text('" + username + "')")
    await page.wait_for_selector("[data-nav=admin]", state="attached")
    assert await page.locator("[data-nav=admin]").is_hidden()
    await page.goto(console.b.url + "/#admin")
    await page.wait_for_selector("#console:not([hidden])")
    assert await page.locator("#admin").is_hidden()
    assert await page.locator("#agents tbody tr").count() == 0
    await page.context.close()


# --- the viewer --------------------------------------------------------------------------------------


async def type_in_xterm(page: Any, text: str) -> None:
    await page.locator("#screen canvas").click(position={"x": 150, "y": 100})  # into the xterm at +10+10
    await page.keyboard.type(text, delay=25)
    await page.keyboard.press("Enter")


async def file_text(path: Path, timeout: float = 20) -> str:
    def read_now() -> str | None:
        return path.read_text() if path.exists() and path.stat().st_size else None

    async def read() -> str | None:
        return await asyncio.to_thread(read_now)

    return await wait_until(read, timeout=timeout, interval=0.2)


@needs_desktop
@pytest.mark.timeout(240)
async def test_viewer_shows_the_session_and_its_controls_act(console: ConsoleStack, browser: Any) -> None:
    """Name, template and state line; full screen; the remote desktop resized to the window (Xvnc's RandR,
    read back with xdpyinfo inside the session); clipboard to the desktop (read there with xclip) and from it."""
    username, password, user = await new_person(console, "viewer")
    session = await user.create(DESKTOP_T, name=f"Viewer {TAG}", agent_id=console.agent_id)
    await user.until_state(session["id"], "running", timeout=40)
    data = console.sessions / session["id"] / "data"
    page = await logged_in(browser, console, username, password)
    opened = time.monotonic()
    await page.goto(f"{console.b.url}/sessions/{session['id']}/view")
    await page.wait_for_selector("#status:text-is('connected')", timeout=30_000)
    print(f"viewer page -> connected: {time.monotonic() - opened:.2f} s")
    assert await page.text_content("#session-name") == f"Viewer {TAG}"
    assert await page.text_content("#session-template") == DESKTOP_T
    assert await page.get_attribute("#status", "data-state") == "connected"
    assert await page.locator("#reconnect").is_hidden() and await page.locator("#wake").is_hidden()

    await page.click("#fullscreen")
    await page.wait_for_selector("#fullscreen[aria-pressed=true]")
    await page.click("#fullscreen")
    await page.wait_for_selector("#fullscreen[aria-pressed=false]")

    # remote resize: the desktop takes the window's size (SetDesktopSize -> Xvnc RandR)
    canvas = page.locator("#screen canvas")
    assert await canvas.get_attribute("width") == "1024"
    await page.select_option("#scaling", "remote")
    await page.set_viewport_size({"width": 900, "height": 700})
    screen = await page.locator("#screen").bounding_box()
    assert screen is not None
    want = f"{int(screen['width'])}x{int(screen['height'])}"
    await page.wait_for_selector(f"#screen canvas[width='{int(screen['width'])}']", timeout=15_000)
    if shutil.which("xdpyinfo"):
        await type_in_xterm(page, "xdpyinfo | grep dimensions > dims.txt")
        assert want in await file_text(data / "dims.txt"), want
    await page.screenshot(path=str(ARTIFACTS / "console-viewer.png"))

    # clipboard, browser -> desktop: the panel's Send (noVNC's clipboardPasteFrom) -> Xvnc's selection
    words = f"pasted-{TAG}"
    await page.click("#clipboard")
    await page.screenshot(path=str(ARTIFACTS / "console-viewer-clipboard.png"))
    await page.wait_for_selector("#clipboard-panel:not([hidden])", timeout=5_000)
    await page.fill("#clipboard-text", words)
    await page.click("#clipboard-send")
    if shutil.which("xclip"):
        await type_in_xterm(page, "xclip -o -selection clipboard > clip.txt")
        assert await file_text(data / "clip.txt") == words
        # desktop -> browser: xclip owns the selection, Xvnc sends it, the panel shows it
        back = f"copied-{TAG}"
        await type_in_xterm(page, f"printf {back} | xclip -selection clipboard")
        await wait_until(lambda: textarea_is(page, back), timeout=20)

    # a key combination from the Send keys menu reaches the desktop: Ctrl+W erases the last word typed
    await page.locator("#screen canvas").click(position={"x": 150, "y": 100})
    await page.keyboard.type(f"touch kept-{TAG} erased-{TAG}", delay=25)
    await page.select_option("#keys", "ctrl-w")
    await page.keyboard.press("Enter")  # the menu gives the focus back to the desktop
    await file_exists(data / f"kept-{TAG}")
    assert not (data / f"erased-{TAG}").exists()
    assert page.refused == []
    await page.context.close()
    await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)


async def file_exists(path: Path, timeout: float = 20) -> None:
    async def there() -> bool:
        return await asyncio.to_thread(path.exists)

    await wait_until(there, timeout=timeout, interval=0.2)


async def textarea_is(page: Any, text: str) -> bool | None:
    return True if await page.input_value("#clipboard-text") == text else None


@needs_desktop
@pytest.mark.timeout(240)
async def test_viewer_reconnects_after_its_gateway_restarts(console: ConsoleStack, browser: Any) -> None:
    """Gateway B (the page's) stops with 1012 and starts again on its port: the state line says
    `reconnecting in N s (gateway restarting)`, then `connected` again with a new ticket."""
    username, password, user = await new_person(console, "reconnector")
    session = await user.create(DESKTOP_T, agent_id=console.agent_id)
    await user.until_state(session["id"], "running", timeout=40)
    page = await logged_in(browser, console, username, password)
    await page.goto(f"{console.b.url}/sessions/{session['id']}/view")
    await page.wait_for_selector("#status:text-is('connected')", timeout=30_000)
    old = console.b
    stopped = time.monotonic()
    old.terminate()
    await page.wait_for_selector("#status[data-state=reconnecting]", timeout=20_000)
    assert "reconnecting in" in str(await page.text_content("#status"))
    settings = {
        "POD_NAME": old.name,
        "METRICS_PORT": str(old.metrics_port),
        "SESSION_QUOTA": "100",
        "PORT": str(old.port),
    }
    console.b = console.stack.start(f"{old.name}-again", "streamspace_gateway", settings)
    await page.wait_for_selector("#status:text-is('connected')", timeout=90_000)
    print(f"gateway B stopped -> viewer connected again: {time.monotonic() - stopped:.2f} s")
    await page.screenshot(path=str(ARTIFACTS / "console-viewer-reconnected.png"))
    await page.context.close()
    await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)
