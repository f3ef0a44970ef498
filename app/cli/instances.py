"""`python -m app --instances N` (what `python3 dev.py run --instances N` runs): N instances of
the service on this machine, to watch the mesh work.

The instances share one embedded nats-server (and PostgreSQL when the domain keeps data, and
Valkey when a transport wants Redis), started here under APP_DATA_DIR, so any instance can be
killed without taking the brokers along; a second run finds their data again. They listen on
consecutive ports from APP_PORT, each with its own data dir (its pid in `instances/iN/pid`),
and their output is interleaved here, each line prefixed by its instance. On a terminal each
runs on a terminal of its own (text logs in colour, and its start banner); otherwise their
JSON lines pass through. Ctrl-C (or SIGTERM) drains them all and stops the servers; nothing
is left running.
"""

from __future__ import annotations

import contextlib
import os
import pty
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from app.brokers import run_embedded
from app.brokers.embedded import NatsServer, ValkeyServer, die_with_parent
from app.cli.binding import bind
from app.main import load_domain
from app.settings import Settings
from app.transports.registry import needs_redis

COLOURS = ("36", "35", "33", "32", "34", "31")
STOP_MARGIN = 5.0  # beyond the drain timeout, before the stragglers are killed


class Instance:
    """One `python -m app` child and the pipe (or terminal) its output comes through."""

    def __init__(self, index: int, env: dict[str, str], terminal: bool) -> None:
        self.name = f"i{index}"
        self.colour = COLOURS[index % len(COLOURS)] if terminal else ""
        self._pending = b""
        if terminal:
            self.fd, child_end = pty.openpty()
        else:
            self.fd, child_end = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=child_end,
            stderr=child_end,
            start_new_session=True,  # a Ctrl-C reaches this process only: it drains them
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        os.close(child_end)
        data = Path(env["APP_DATA_DIR"])
        data.mkdir(parents=True, exist_ok=True)
        (data / "pid").write_text(f"{self.proc.pid}\n")  # to kill one by hand: kill -9 $(cat)

    def prefix(self, line: bytes) -> bytes:
        tag = f"[{self.name}] "
        if self.colour:
            tag = f"\x1b[{self.colour}m[{self.name}]\x1b[0m "
        return tag.encode() + line

    def read(self) -> list[bytes] | None:
        """The whole lines that arrived (prefixed); None once the output has ended."""
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # a terminal whose child is gone reads EIO
            chunk = b""
        if not chunk:
            rest = [self.prefix(self._pending + b"\n")] if self._pending else []
            self._pending = b""
            return rest or None
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        return [self.prefix(line.rstrip(b"\r") + b"\n") for line in lines]

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)


def run(settings: Settings, count: int) -> int:
    for port in range(settings.port, settings.port + count):  # each, before any server starts
        sock = bind(settings.host, port)
        if sock is None:
            return 2
        sock.close()
    terminal = sys.stdout.isatty()
    stopping: list[bool] = []

    def stop(sig: int, frame: FrameType | None) -> None:
        stopping.append(True)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with contextlib.ExitStack() as stack:
        shared = _shared_servers(stack, settings)
        instances = [
            Instance(index, _env(settings, index, shared), terminal) for index in range(count)
        ]
        ports = f"{settings.port}-{settings.port + count - 1}"
        _say(f"{count} instances of {settings.service_name} on ports {ports}; Ctrl-C stops them")
        _pump(instances, stopping, settings.drain_timeout + STOP_MARGIN)
    codes = [instance.proc.returncode for instance in instances]
    return 0 if stopping or all(code == 0 for code in codes) else 1


def _pump(instances: list[Instance], stopping: list[bool], patience: float) -> None:
    """Copy every instance's lines to stdout until all have ended; on a stop, SIGTERM them all
    and SIGKILL what is left after `patience` seconds."""
    selector = selectors.DefaultSelector()
    for instance in instances:
        selector.register(instance.fd, selectors.EVENT_READ, instance)
    open_ends = len(instances)
    kill_at: float | None = None
    while open_ends:
        if stopping and kill_at is None:
            kill_at = time.monotonic() + patience
            for instance in instances:
                instance.signal(signal.SIGTERM)
        if kill_at is not None and time.monotonic() > kill_at:
            for instance in instances:
                instance.signal(signal.SIGKILL)
        for key, _ in selector.select(timeout=0.2):
            ready: Instance = key.data
            lines = ready.read()
            if lines is None:
                selector.unregister(ready.fd)
                os.close(ready.fd)
                open_ends -= 1
                code = ready.proc.wait()
                if not stopping:
                    _say(f"{ready.name} exited with {_describe(code)}")
                continue
            sys.stdout.buffer.write(b"".join(lines))
            sys.stdout.buffer.flush()
    for instance in instances:
        instance.proc.wait()


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def _say(text: str) -> None:
    print(f"[instances] {text}", flush=True)


def _env(settings: Settings, index: int, shared: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **shared,
        "APP_PORT": str(settings.port + index),
        "APP_DATA_DIR": str(settings.data_path / "instances" / f"i{index}"),
    }


def _shared_servers(stack: contextlib.ExitStack, settings: Settings) -> dict[str, str]:
    """Start the servers the instances share where no URL is set; their URLs as settings."""
    env: dict[str, str] = {}
    if not settings.nats_servers:
        nats = run_embedded(
            stack, NatsServer(settings.data_path / "nats", sync=settings.nats_sync), 30.0
        )
        env["APP_NATS_URL"] = nats.url
        _say(f"embedded nats-server at {nats.url}")
    if needs_redis(settings) and settings.redis_url is None:
        valkey = run_embedded(stack, ValkeyServer(settings.data_path / "valkey"), 30.0)
        env["APP_REDIS_URL"] = valkey.url
        _say(f"embedded valkey-server at {valkey.url}")
    env |= _shared_database(stack, settings)
    return env


def _shared_database(stack: contextlib.ExitStack, settings: Settings) -> dict[str, str]:
    """PostgreSQL for the instances, when the domain keeps data and no URL is set."""
    from app.brokers.embedded import PostgresServer

    domain = load_domain(settings.domain)
    if settings.database_url is not None or not getattr(domain, "USES_DATABASE", False):
        return {}
    postgres = run_embedded(stack, PostgresServer(settings.data_path / "postgres"), 30.0)
    _say("embedded PostgreSQL started")
    migrate = "true" if settings.database_migrate is None else str(settings.database_migrate)
    return {"APP_DATABASE_URL": postgres.url, "APP_DATABASE_MIGRATE": migrate.lower()}
