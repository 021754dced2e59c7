"""The sample session app for the local platform: an HTTP server answering with what it received.

    python -m streamspace_agent.echo_app --port 8080 [--host 127.0.0.1]

Every GET/POST/PUT/DELETE is answered with JSON: the app's name, method, path, headers, body, and the
session id from STREAMSPACE_SESSION_ID. Standard library only, so it runs wherever the agent runs.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "streamspace-echo/1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        reply = {
            "app": "streamspace echo app",
            "session_id": os.environ.get("STREAMSPACE_SESSION_ID", ""),
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body,
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # quiet: one line per request is noise here
        return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    with ThreadingHTTPServer((args.host, args.port), EchoHandler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
