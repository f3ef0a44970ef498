"""A pytest plugin with real servers for tests: nats-server, Valkey, and the service itself.

Every fixture starts a real process on a free loopback port with its own temporary store, and
exposes stop/start/restart/kill so fault tests can break it. Services generated from this
template reuse it: `pytest_plugins = ["app.testing"]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest
import uvicorn
from fastapi import FastAPI
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.brokers.embedded import NatsServer, PostgresServer, ValkeyServer, free_port
from app.observability.instruments import LocalHistogramsReader, keep_histograms_locally
from app.settings import Settings
from app.testing.faults import TcpProxy

__all__ = [
    "NatsCluster",
    "NatsServer",
    "ServiceProcess",
    "ValkeyServer",
    "eventually",
    "running_app",
]


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> float:
    """Wait until `check()` is true; return the seconds it took, or fail the test."""
    start = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"{message} not reached within {timeout}s")
        await asyncio.sleep(interval)


class ServiceProcess:
    """`python -m app` as a real subprocess on a free port, with its own data dir.

    It runs in its own process group; `kill()` sends SIGKILL to the service alone, and the
    embedded servers it started follow it (they die with their parent).
    """

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(self.port),
            "APP_DATA_DIR": str(workdir / "data"),
            "APP_LOG_FORMAT": "json",
            # Tests kill processes, never the machine: the page cache survives them, so the
            # embedded broker may flush on its default timer rather than on every write.
            "APP_NATS_SYNC": "2m",
            **env,
        }
        self.log_path = workdir / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: str | None = "/healthz", timeout: float = 30.0) -> ServiceProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app"],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_for(wait, timeout)
        return self

    def wait_for(self, path: str, timeout: float = 30.0) -> None:
        """Block until GET `path` answers 200, or fail with the service's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"service exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"{self.url}{path} not 200 within {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send_signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop gracefully with `sig` and return the exit code."""
        if self.proc is None:
            return None
        self.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"service ignored {sig.name} for {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL, the crash a fault test wants."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals alone: several run in one test
    process, and sse-starlette ends every event stream once the server holding SIGTERM is
    exiting, so one stopping would end the others' streams."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, app: FastAPI | None = None
) -> AsyncIterator[tuple[FastAPI, str]]:
    """Serve the app with a real uvicorn server in this event loop; yield it and its base URL."""
    from app.main import create_app

    app = app or create_app(settings)
    port = settings.port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = _InProcessServer(config)
    # Bound before the lifespan runs: its broker connections cannot take the port meanwhile.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during startup")
            await asyncio.sleep(0.01)
    except BaseException:
        listener.close()
        raise
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=30)
        finally:
            listener.close()


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on its own file store; the store survives restarts."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


class NatsCluster:
    """A JetStream cluster of `size` nats-server processes on loopback, joined by routes.

    Each node has its own store, server name (`n0`, `n1`, ...) and ports, all kept across
    restarts, and reads a generated config file (`node.conf` in its store), so `kill(i)` and
    `start(i)` bring back the same cluster member with its data.

    `route_proxies`: every route runs through a proxy of its own, `route_proxies[(i, j)]` from
    node i to node j (started by the caller, in its event loop), so that a node can be cut from
    its peers while it and its clients run on. Each node advertises an address nobody listens
    on, so that gossip cannot teach the others a way to it around the proxies.
    """

    def __init__(
        self,
        root: Path,
        size: int = 3,
        name: str = "qosmesh-test",
        advertise: bool = True,
        route_proxies: bool = False,
    ) -> None:
        self.name = name
        cluster_ports = [free_port() for _ in range(size)]
        self.route_proxies: dict[tuple[int, int], TcpProxy] = {}
        if route_proxies:
            self.route_proxies = {
                (i, j): TcpProxy("127.0.0.1", cluster_ports[j])
                for i in range(size)
                for j in range(size)
                if i != j
            }
        self.nodes: list[NatsServer] = []
        for index, port in enumerate(cluster_ports):
            store = (root / f"n{index}").resolve()
            store.mkdir(parents=True, exist_ok=True)
            if route_proxies:
                hops = [self.route_proxies[(index, j)] for j in range(size) if j != index]
                routes = [f"nats://127.0.0.1:{hop.port}" for hop in hops]
                nowhere: str | None = f"127.0.0.1:{free_port()}"
            else:
                routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports if p != port]
                nowhere = None
            config = store / "node.conf"
            config.write_text(_node_config(f"n{index}", name, port, routes, advertise, nowhere))
            self.nodes.append(NatsServer(store, extra_args=["-c", str(config)]))

    def partition(self, index: int, seconds: float) -> None:
        """Cut node `index` from every peer for `seconds` (its routes' proxies close their
        connections and refuse new ones); its clients stay connected to it."""
        for (i, j), proxy in self.route_proxies.items():
            if index in (i, j):
                proxy.cut(refuse_for=seconds)

    @property
    def urls(self) -> str:
        """The client URLs comma-joined, the way APP_NATS_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    def _pick(self, index: int | None) -> list[NatsServer]:
        return self.nodes if index is None else [self.nodes[index]]

    def start(self, index: int | None = None) -> None:
        """Start node `index`, or every node."""
        for node in self._pick(index):
            node.start()

    def stop(self, index: int | None = None) -> None:
        """SIGTERM node `index`, or every node."""
        for node in self._pick(index):
            node.stop()

    def kill(self, index: int) -> None:
        """SIGKILL one node: the crash a fault test wants."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        self.nodes[index].restart()

    def index_of(self, server_name: str) -> int:
        return int(server_name.removeprefix("n"))

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[JetStreamContext]:
        """A JetStream context on a connection to the cluster's running nodes."""
        servers = [node.url for node in self.nodes if node.running]
        nc = await nats.connect(servers=servers, reconnect_time_wait=0.25, connect_timeout=2)
        try:
            yield nc.jetstream()
        finally:
            await nc.close()

    async def leader(self, js: JetStreamContext, stream: str) -> int | None:
        """The index of the node leading `stream` (a KV bucket's stream is `KV_<bucket>`)."""
        info = await js.stream_info(stream)
        leader = info.cluster.leader if info.cluster else None
        return self.index_of(leader) if leader else None

    async def replicas_current(self, js: JetStreamContext, stream: str) -> bool:
        """Whether `stream` has a leader and every other replica is online, current, no lag."""
        info = await js.stream_info(stream)
        cluster = info.cluster
        if cluster is None or not cluster.leader:
            return False
        peers = cluster.replicas or []
        return len(peers) == len(self.nodes) - 1 and all(
            peer.current and not peer.offline and not peer.lag for peer in peers
        )

    async def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait until a JetStream meta leader is elected and a stream with a replica on every
        node takes a write; return the seconds it took."""
        started = time.monotonic()
        probe = StreamConfig(
            name="QM_CLUSTER_PROBE",
            subjects=["qm.cluster.probe"],
            storage=StorageType.MEMORY,
            num_replicas=len(self.nodes),
        )
        last: Exception | None = None
        while time.monotonic() - started < timeout:
            try:
                async with self.client() as js:
                    await js.account_info()
                    await js.add_stream(probe)
                    await js.publish("qm.cluster.probe", b"", timeout=2)
                    await js.delete_stream(probe.name)  # type: ignore[arg-type]
                return time.monotonic() - started
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                last = exc
            await asyncio.sleep(0.25)
        raise TimeoutError(f"JetStream cluster not ready within {timeout}s: {last!r}")


def _node_config(
    server_name: str,
    cluster: str,
    port: int,
    routes: list[str],
    advertise: bool,
    route_advertise: str | None = None,
) -> str:
    """`advertise=False` keeps clients on the URLs they were given (a proxy in front of each
    node, say) rather than the node addresses the cluster would tell them. `route_advertise`:
    the address this node gives its peers for routes (gossip), instead of its own."""
    route_list = ", ".join(f'"{route}"' for route in routes)
    gossip = f'  advertise: "{route_advertise}"\n' if route_advertise else ""
    return (
        f'server_name: "{server_name}"\n'
        f"cluster {{\n"
        f'  name: "{cluster}"\n'
        f'  listen: "127.0.0.1:{port}"\n'
        f"  routes: [{route_list}]\n"
        f"  no_advertise: {'false' if advertise else 'true'}\n"
        f"{gossip}"
        f"}}\n"
    )


@pytest.fixture
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A real 3-node JetStream cluster, yielded once its meta leader is elected."""
    cluster = NatsCluster(tmp_path_factory.mktemp("nats-cluster"))
    try:
        cluster.start()
        asyncio.run(cluster.wait_ready())
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL on a loopback port with its own data directory, kept across restarts."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start(30)
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    """A real Valkey server with AOF (fsync always), so a restart loses nothing acknowledged."""
    server = ValkeyServer(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def service_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServiceProcess]]:
    """A factory: `service_process({"APP_NATS_URL": url})` starts one more service subprocess."""
    started: list[ServiceProcess] = []

    def start(
        env: Mapping[str, str] | None = None, wait: str | None = "/healthz"
    ) -> ServiceProcess:
        service = ServiceProcess(tmp_path_factory.mktemp("service"), env or {})
        started.append(service)
        return service.start(wait=wait)

    yield start
    for service in started:
        service.stop(signal.SIGTERM, timeout=30)


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for an in-process instance: its own data dir and port, and the given overrides."""

    def make(**overrides: object) -> Settings:
        # An embedded broker flushes on its timer (see ServiceProcess): no test cuts the power.
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "port": free_port(),
            "nats_sync": "2m",
        }
        values.update(overrides)
        return Settings.model_validate(values)

    return make


class Metrics:
    """Reads what the process recorded through the OpenTelemetry metrics API."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self._reader = reader

    def value(self, name: str, **attributes: object) -> float:
        """The sum of `name`'s points whose attributes include `attributes`."""
        data = self._reader.get_metrics_data()
        total = 0.0
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        attrs = dict(point.attributes or {})
                        if all(attrs.get(k) == v for k, v in attributes.items()):
                            total += getattr(point, "value", getattr(point, "count", 0))
        return total


class _Reader(LocalHistogramsReader, InMemoryMetricReader):
    """In memory, with the locally aggregated histograms, as the service's readers report them."""


_READER = _Reader()
_SPANS = InMemorySpanExporter()


def pytest_configure(config: pytest.Config) -> None:
    """Install in-memory OpenTelemetry providers before any app does (the app then keeps
    them), so tests can read what this process recorded."""
    otel_metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
    keep_histograms_locally()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_SPANS))
    otel_trace.set_tracer_provider(provider)


@pytest.fixture
def metrics() -> Metrics:
    """Every metric recorded in this process."""
    return Metrics(_READER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans finished in this process during the test."""
    _SPANS.clear()
    yield _SPANS
    _SPANS.clear()


@pytest.fixture
async def nats_proxy(nats_server: NatsServer) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the test nats-server, for cuts and one-way losses."""
    proxy = TcpProxy("127.0.0.1", nats_server.port)
    await proxy.start()
    yield proxy
    await proxy.stop()
