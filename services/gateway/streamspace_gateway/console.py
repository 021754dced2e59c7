"""The web console (docs/streams.md): a few static pages for people, on top of the REST API.

    /                          log in; my sessions as cards (name, template, state, times, thumbnail) with
                               the actions their state allows; create with a name; the admin area (#admin)
    /sessions/{id}/view        the viewer: noVNC on the session's stream (ticket from the REST API), with
                               display modes, full screen, keys, clipboard and reconnection
    /console/...               the console's own modules (plain ES modules, no build step)
    /novnc/...                 the noVNC library, served from NOVNC_DIR (Debian's `novnc` package)

The pages hold no data: everything goes through the REST API with the login token, which the console
keeps in the tab's sessionStorage (never in a URL; the stream uses a single-use ticket).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .errors import ApiError

CONSOLE_DIR = Path(__file__).parent / "console"


def add_console_routes(app: web.Application, novnc_dir: str) -> None:
    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html")

    async def viewer(_: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "view.html")

    app.router.add_get("/", index)
    app.router.add_get("/sessions/{session_id}/view", viewer)
    app.router.add_static("/console/", CONSOLE_DIR)
    if (Path(novnc_dir) / "core" / "rfb.js").is_file():
        app.router.add_static("/novnc/", novnc_dir)
    else:

        async def missing(_: web.Request) -> web.Response:
            raise ApiError(404, "novnc_missing", f"noVNC is not installed in {novnc_dir} (NOVNC_DIR)", "NOVNC_DIR")

        app.router.add_get("/novnc/{path:.*}", missing)
