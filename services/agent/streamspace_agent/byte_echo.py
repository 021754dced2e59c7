"""A byte-echo session for the local platform: a TCP server that sends back every byte it receives.

    python -m streamspace_agent.byte_echo --port 9000

For the stream tests (integrity, backpressure): it writes back what it read before reading more, so
a client that stops reading stops it too, the way a VNC server stalls on a slow viewer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

CHUNK = 64 * 1024


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(echo, host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9000")))
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
