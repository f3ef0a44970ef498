"""Network faults for tests: a TCP proxy on loopback that a test can cut, silence or black-hole.

A client pointed at the proxy meets what a real network does to it: a broker that went away
(connections closed, new ones refused), a link that carries nothing for a while (bytes
swallowed, the socket still open), or replies lost in one direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from app.embedded import free_port


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` until told otherwise."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._refuse_until = 0.0
        self.swallow_up = False  # client -> server bytes are dropped
        self.swallow_down = False  # server -> client bytes are dropped

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        self.cut(0)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self, refuse_for: float) -> None:
        """Close every connection now, and refuse new ones for `refuse_for` seconds."""
        self._refuse_until = time.monotonic() + refuse_for
        for client, upstream in list(self._links):
            client.close()
            upstream.close()
        self._links.clear()

    def silence(self, on: bool = True) -> None:
        """Swallow the bytes of every connection both ways, keeping the sockets open."""
        self.swallow_up = self.swallow_down = on

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, up=True), self._pump(up_reader, writer, up=False)
            )
        finally:
            self._links.discard(link)
            writer.close()
            up_writer.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, up: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if self.swallow_up if up else self.swallow_down:
                    continue
                sink.write(data)
                await sink.drain()
        sink.close()
