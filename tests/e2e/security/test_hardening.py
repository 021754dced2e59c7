"""HTTP hardening of the gateway (docs/security.md, "## HTTP"), against a real gateway process.

Every answer, the console's pages and the API's JSON and errors alike, carries a Content-Security-Policy
that forbids framing and inline script, X-Frame-Options DENY, nosniff and no-referrer; every answer
has a request id (the caller's if sane, else a new one) in its X-Request-Id header, in its error body,
and on the gateway's log lines for that request; /metrics is not on the API port but on METRICS_PORT.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest

from streamspace_testkit import RunEnv, Service, Stack, wait_until

CONSOLE_DIR = Path(__file__).resolve().parents[3] / "services/gateway/streamspace_gateway/console"
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
async def gateway(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """One gateway replica, logging JSON so a test can find its request's lines."""
    directory = tmp_path_factory.mktemp("hardening")
    stack = Stack(test_env, directory)
    # NOVNC_DIR empty, whether or not the machine has noVNC: /novnc/... is then a JSON 404 of the console
    service = stack.gateway("gateway-hardening", LOG_FORMAT="json", NOVNC_DIR=str(directory / "no-novnc"))
    await stack.ready(service)
    yield service
    stack.stop_all()
    print(stack.dump_logs())


def assert_hardened(response: aiohttp.ClientResponse) -> None:
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    assert directives.get("frame-ancestors") == ["'none'"], (response.url, csp)
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, csp
    script = directives.get("script-src", directives.get("default-src"))
    assert script in (["'self'"], ["'none'"]), csp  # the console's own modules, or nothing at all
    assert headers.get("X-Frame-Options") == "DENY", response.url
    assert headers.get("X-Content-Type-Options") == "nosniff", response.url
    assert headers.get("Referrer-Policy") == "no-referrer", response.url
    assert headers.get("X-Request-Id"), response.url


async def test_console_pages_and_files_send_the_hardening_headers(gateway: Service) -> None:
    """Clickjacking and injected script: the console may not be framed, and runs only its own modules."""
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/sessions/any/view", "/console/console.js", "/console/style.css", "/novnc/core/rfb.js"):
            async with http.get(gateway.url + path) as response:
                assert_hardened(response)
                if path == "/":
                    assert response.status == 200
                    directives = response.headers["Content-Security-Policy"]
                    # the viewer's stream is a same-origin WebSocket; noVNC draws data:/blob: images
                    assert "connect-src 'self'" in directives and "img-src 'self' data: blob:" in directives


class InlineFinder(HTMLParser):
    """Inline script, inline style and on* handler attributes: what the CSP would block in a browser."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        names = dict(attrs)
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style> element")
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]


@pytest.mark.parametrize("page", ["index.html", "view.html"])
def test_the_console_pages_need_nothing_the_policy_forbids(page: str) -> None:
    """The policy must not break the console: its pages hold no inline script, style or handler."""
    finder = InlineFinder()
    finder.feed((CONSOLE_DIR / page).read_text())
    assert finder.found == []
    for module in CONSOLE_DIR.glob("*.js"):
        source = module.read_text()
        assert not re.search(r"\beval\(|new Function\(|innerHTML|setAttribute\(\s*[\"']style", source), module.name


async def test_api_answers_and_errors_send_the_headers_and_the_request_id(gateway: Service) -> None:
    """Every error body names the request (to find its log lines), and the header repeats it."""
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/api/v1/openapi.json") as response:
            assert response.status == 200
            assert_hardened(response)
            assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
            schema = (await response.json())["components"]["schemas"]["ErrorBody"]
            assert "request_id" in schema["properties"]

        as_json = {"Content-Type": "application/json"}
        cases: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
            ("GET", "/api/v1/users/me", None, {}, 401),
            ("POST", "/api/v1/auth/login", b"{not json", as_json, 400),
            ("POST", "/api/v1/keys", b"{not json", {**as_json, "Authorization": "Bearer x"}, 401),
            ("GET", "/api/v1/no-such-thing", None, {}, 404),
            ("DELETE", "/api/v1/openapi.json", None, {}, 405),
            ("GET", "/novnc/core/rfb.js", None, {}, 404),  # NOVNC_DIR has no noVNC: a console error
        ]
        for method, path, data, headers, status in cases:
            async with http.request(method, gateway.url + path, data=data, headers=headers) as response:
                assert response.status == status, (path, await response.text())
                assert_hardened(response)
                body = await response.json()
                assert body["error"]["request_id"] == response.headers["X-Request-Id"], (path, body)
                assert HEX_ID.match(body["error"]["request_id"]), body


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("trace-4bf92f3577b34da6a3ce929d0e0e4736", True),
        ("01HZX3J8Q0:edge.1_a-b", True),
        ("x" * 128, True),
        ("x" * 129, False),  # too long
        ("a b", False),  # a space
        ("a;b=c", False),
        ("<script>", False),
        ("", False),
    ],
)
async def test_a_sane_incoming_request_id_is_kept_and_anything_else_replaced(
    gateway: Service, sent: str, kept: bool
) -> None:
    """Log injection through X-Request-Id: only a short id of safe characters is taken as it is."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/api/v1/users/me", headers={"X-Request-Id": sent}) as response,
    ):
        returned = response.headers["X-Request-Id"]
        assert (await response.json())["error"]["request_id"] == returned
    if kept:
        assert returned == sent
    else:
        assert returned != sent and HEX_ID.match(returned)


async def test_the_request_id_is_on_the_log_lines_of_the_request(gateway: Service) -> None:
    """A user quoting the id of a failed call finds the gateway's log lines of that call."""
    request_id = f"hardening-{uuid.uuid4().hex}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/api/v1/users/me", headers={"X-Request-Id": request_id}) as response,
    ):
        assert response.status == 401

    async def logged() -> list[dict[str, object]]:
        lines = [line for line in gateway.log().splitlines() if request_id in line]
        return [json.loads(line) for line in lines]

    [line] = await wait_until(logged, timeout=5)
    assert line["request_id"] == request_id
    assert (line["event"], line["status"], line["path"]) == ("request_refused", 401, "/api/v1/users/me")
    # and nothing logged outside a request carries one
    unrelated = [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{")]
    assert any(entry["event"] == "starting" and "request_id" not in entry for entry in unrelated)


async def test_metrics_are_not_on_the_api_port_but_on_the_metrics_port(gateway: Service) -> None:
    """Information leak: /metrics (agents, commands, streams) is not served on the public API port."""
    assert gateway.metrics_port and gateway.metrics_port != gateway.port
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/metrics") as response:
            assert response.status == 404
            assert_hardened(response)
            assert "streamspace_gateway" not in await response.text()
        async with http.get(gateway.metrics_url) as response:
            assert response.status == 200
            text = await response.text()
            assert "streamspace_gateway_agents_connected" in text
        async with http.get(f"http://127.0.0.1:{gateway.metrics_port}/api/v1/openapi.json") as response:
            assert response.status == 404  # the metrics port serves /metrics alone
