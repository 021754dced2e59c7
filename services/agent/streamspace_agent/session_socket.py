"""A tunnel's TCP connection to its session, with no copy of the bytes on the agent's side.

asyncio's StreamReader copies every chunk the loop reads into its buffer and out again; here a read
returns (a zero-copy view of) the bytes objects the loop made, at most `most` bytes: one WebSocket frame.
Pieces smaller than that are joined. Backpressure as before: reading stops while more than `limit`
bytes wait for the pump, and `drain` waits while the kernel's send buffer (the transport's high-water
mark) is full.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast


class SessionSocket(asyncio.Protocol):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[memoryview] = deque()
        self.waiting = 0  # bytes in `chunks`
        self.paused = False
        self.ended = False  # EOF or connection lost: `read` returns b"" once `chunks` is empty
        self.readable: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None  # while the transport's buffer is full

    @classmethod
    async def connect(cls, host: str, port: int, limit: int) -> SessionSocket:
        _, protocol = await asyncio.get_running_loop().create_connection(lambda: cls(limit), host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's

    def data_received(self, data: bytes) -> None:
        self.chunks.append(memoryview(data))
        self.waiting += len(data)
        if self.waiting > self.limit and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake_reader()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def _wake_reader(self) -> None:
        if self.readable is not None and not self.readable.done():
            self.readable.set_result(None)

    async def read(self, most: int) -> bytes | memoryview:
        """Up to `most` bytes of what arrived (b"" once the session closed its side)."""
        while not self.chunks:
            if self.ended:
                return b""
            self.readable = asyncio.get_running_loop().create_future()
            await self.readable
        head = self.chunks.popleft()
        data: bytes | memoryview = head
        if len(head) > most:
            self.chunks.appendleft(head[most:])  # views: no copy
            data = head[:most]
        elif self.chunks and len(self.chunks[0]) + len(data) <= most:  # small pieces: one frame
            parts = [data]
            while self.chunks and len(self.chunks[0]) + sum(map(len, parts)) <= most:
                parts.append(self.chunks.popleft())
            data = b"".join(parts)
        self.waiting -= len(data)
        if self.paused and self.waiting <= self.limit and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the session's connection is closed")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.writable is not None:
            await self.writable

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
