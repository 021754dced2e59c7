"""The agent's end of a tunnel's TCP connection (streamspace_agent/session_socket.py), on real sockets:
every byte arrives in order in frames of at most the size asked, and a pump that stops reading stops
the socket being read (backpressure) instead of buffering what the session sends."""

from __future__ import annotations

import asyncio
import os

from streamspace_agent.session_socket import SessionSocket
from streamspace_testkit import wait_until

FRAME = 64 * 1024
LIMIT = 256 * 1024


async def serve(payload: bytes) -> tuple[asyncio.Server, int]:
    """A session that writes `payload` to whoever connects, then closes."""

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_every_byte_arrives_in_frames_of_at_most_the_size_asked() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    server, port = await serve(payload)
    async with server:
        session = await SessionSocket.connect("127.0.0.1", port, LIMIT)
        frames = []
        while frame := await session.read(FRAME):
            frames.append(bytes(frame))
        session.close()
    assert b"".join(frames) == payload
    assert max(map(len, frames)) <= FRAME


async def test_small_pieces_are_joined_and_a_large_one_split() -> None:
    session = SessionSocket(LIMIT)  # fed by hand: what the loop would hand it
    for piece in (b"ab", b"cd", b"ef"):
        session.data_received(piece)
    assert bytes(await session.read(FRAME)) == b"abcdef"
    session.data_received(b"0123456789")
    assert [bytes(await session.read(4)) for _ in range(3)] == [b"0123", b"4567", b"89"]
    assert session.waiting == 0


async def test_a_pump_that_stops_reading_stops_the_socket_being_read() -> None:
    payload = os.urandom(16 * 1024 * 1024)
    server, port = await serve(payload)
    async with server:
        session = await SessionSocket.connect("127.0.0.1", port, LIMIT)

        async def paused() -> bool:
            return session.paused

        await wait_until(paused, timeout=30)
        await asyncio.sleep(0.5)  # the session keeps writing; nothing more is read meanwhile
        assert session.waiting <= LIMIT + 1024 * 1024  # the limit and at most one read past it
        received = bytearray()
        while frame := await session.read(FRAME):
            received += frame
        session.close()
    assert bytes(received) == payload
