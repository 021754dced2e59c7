"""A TCP proxy the test controls, between an agent and a gateway (this kernel has no netem).

`cut()` stops the link both ways without closing anything: bytes already sent wait (as TCP would
retransmit them), new connections hang, neither end sees a close; only their own heartbeats and stale
checks can tell. `hold_upstream()` stops only agent -> gateway (the agent's acks, results and
heartbeats are withheld while commands still reach it). `heal()` lets everything flow again.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.upstream = asyncio.Event()  # agent -> gateway flows
        self.downstream = asyncio.Event()  # gateway -> agent flows
        self.heal()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()

    def cut(self) -> None:
        self.upstream.clear()
        self.downstream.clear()

    def hold_upstream(self) -> None:
        self.upstream.clear()

    def heal(self) -> None:
        self.upstream.set()
        self.downstream.set()

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.writers.add(client_writer)
        try:
            await self.upstream.wait()
            await self.downstream.wait()
            try:
                server_reader, server_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.connections += 1
            self.writers.add(server_writer)
            try:
                await asyncio.gather(
                    self.pump(client_reader, server_writer, self.upstream),
                    self.pump(server_reader, client_writer, self.downstream),
                )
            finally:
                self.writers.discard(server_writer)
                server_writer.close()
        finally:
            self.writers.discard(client_writer)
            client_writer.close()

    @staticmethod
    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        try:
            while True:
                await flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.write_eof()
