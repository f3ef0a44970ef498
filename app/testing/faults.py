"""Faults for tests: a frozen process, a clock that jumps, a disk that fills up, and a TCP proxy
on loopback a test can cut, silence or black-hole.

A client pointed at the proxy meets what a real network does to it: a broker that went away
(connections closed, new ones refused), a link that carries nothing for a while (bytes
swallowed, the socket still open), replies lost in one direction, or a slow link (every byte
delivered late, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.brokers.embedded import free_port

FAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)
"""Debian's libfaketime (`apt-get install faketime`), or None where it is not installed."""


class Disk:
    """A small tmpfs mounted at `path` (as root), that `fill` fills to the last byte: every write
    of a server keeping its data there fails with ENOSPC, as on a full disk, until `free`.

    A store limit a server enforces itself (JetStream's `max_file_store`) is refused politely
    and never reaches the code paths a real full disk does (a failed write halfway through a
    block, a WAL segment that cannot be created): the filesystem is the faithful place."""

    def __init__(self, path: Path, size_mib: int) -> None:
        self.path = path
        self.size_mib = size_mib
        self._filler = path / ".disk-full"

    @staticmethod
    def available(scratch: Path) -> str | None:
        """None when a tmpfs can be mounted here, else why not (in one line)."""
        probe = scratch / "tmpfs-probe"
        probe.mkdir(parents=True, exist_ok=True)
        try:
            _mount(probe, 1)
        except (OSError, subprocess.CalledProcessError) as exc:
            return f"a tmpfs cannot be mounted here (it needs root): {exc}"
        finally:
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                _unmount(probe)
        return None

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _mount(self.path, self.size_mib)

    def unmount(self) -> None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            _unmount(self.path)

    def fill(self) -> None:
        """Take every free byte (blocks actually allocated, not a sparse file)."""
        stat = os.statvfs(self.path)
        fd = os.open(self._filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            with contextlib.suppress(OSError):  # ENOSPC at the very end: full is full
                os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize)
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


def _mount(path: Path, size_mib: int) -> None:
    command = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)]
    subprocess.run(command, check=True, capture_output=True, timeout=10)


def _unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=10)  # noqa: S607


class Clock:
    """The wall clock of the processes started with `env`, moved while they run: libfaketime
    reads the offset from a control file at most a second old. Their monotonic clock is left
    alone (asyncio's timers, and every duration measured, stay true), as an NTP step leaves it."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.set(0)

    @property
    def env(self) -> dict[str, str]:
        if FAKETIME is None:
            raise RuntimeError("clock faults need Debian's faketime (apt-get install faketime)")
        return {
            "LD_PRELOAD": str(FAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.control),
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_CACHE_DURATION": "1",
        }

    def set(self, offset: int) -> None:
        """Jump to `offset` whole seconds from the true time (0: the true time again)."""
        self.control.write_text(f"{offset:+d}s\n")


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP `pid` and return once every one of its threads has stopped.

    The signal stops a process lazily: each thread stops when it next runs, which on a loaded
    machine can be milliseconds after `kill` returns, time enough for a broker to answer a
    burst of requests a test sent to a server it believes frozen.
    """
    os.kill(pid, signal.SIGSTOP)
    if not sys.platform.startswith("linux"):
        return  # no /proc to ask: the signal is all there is
    deadline = time.monotonic() + timeout
    while not _stopped(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} had threads running {timeout}s after SIGSTOP")
        time.sleep(0.0005)


def thaw(pid: int) -> None:
    """SIGCONT: the frozen process runs again."""
    os.kill(pid, signal.SIGCONT)


def _stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended
        state = stat.rsplit(")", 1)[1].split()[0]  # the name in parentheses may hold spaces
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


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
        self.delay = 0.0  # seconds each chunk is held before it is passed on, both ways

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
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        courier: asyncio.Task[None] | None = None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if self.swallow_up if up else self.swallow_down:
                    continue
                if self.delay or (courier is not None and not courier.done()):
                    # Late, and behind whatever is still held: bytes never overtake.
                    late.put_nowait((time.monotonic() + self.delay, data))
                    if courier is None or courier.done():
                        courier = asyncio.create_task(_deliver(late, sink))
                    continue
                sink.write(data)
                await sink.drain()
        if courier is not None:
            await courier
        sink.close()


async def _deliver(late: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter) -> None:
    """Pass on the held chunks, each when its time comes; return once none is left."""
    with contextlib.suppress(OSError):  # the link was cut meanwhile: the rest is lost
        while not late.empty():
            due, data = late.get_nowait()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sink.write(data)
            await sink.drain()
