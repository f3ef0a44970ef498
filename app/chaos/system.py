"""The system under test and the nemesis's hands on it: brokers, instances of `python -m app`
with the example domain, and a TCP proxy on every link from an instance to a broker, all real
processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import nats.errors
import nats.js.errors
import psutil
import redis.asyncio as aioredis
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from app.brokers.embedded import NatsServer, PostgresServer, ServerProcess, ValkeyServer
from app.chaos.checker import StoredOrder
from app.chaos.domain import LEASE
from app.chaos.schedule import Fault, Variant
from app.testing import NatsCluster, ServiceProcess
from app.testing.faults import Clock, Disk, TcpProxy, freeze, thaw
from app.transports.jetstream.streams import stream_name

SERVICE = "chaos"
ORDERS_STREAM = f"{SERVICE.upper()}_ORDER_PLACED"
ADMIN_TOKEN = "chaos-admin-token-not-a-secret"  # noqa: S105 (a loopback test system)
START_TIMEOUT = 60.0


class ChaosError(Exception):
    """The system could not be started or brought back: a finding, with the logs to show."""


@dataclass(slots=True)
class Instance:
    index: int
    process: ServiceProcess
    proxies: list[TcpProxy]
    broker_proxies: list[TcpProxy] = field(default_factory=list)  # NATS nodes, and Valkey
    database_proxies: list[TcpProxy] = field(default_factory=list)
    clock: Clock | None = None  # its wall clock, when the schedule moves clocks
    incarnation: int = 0
    served_at: float = 0.0  # when the current incarnation first answered /healthz
    warm_rss: int | None = None
    rss: int | None = None
    counters: dict[tuple[int, str], float] = field(default_factory=dict)
    health: list[tuple[float, bool]] = field(default_factory=list)  # (monotonic, answered)

    @property
    def name(self) -> str:
        return f"i{self.index}"

    @property
    def url(self) -> str:
        return self.process.url


class System:
    """`variant`: one nats-server (`jetstream`), the same with Valkey carrying QoS 1 and 2
    (`redis`), or a 3-node JetStream cluster with every stream on 3 replicas (`cluster`)."""

    def __init__(
        self,
        variant: Variant,
        root: Path,
        *,
        instances: int = 3,
        ack_wait: float = 2.0,
        node_ttl: float = 3.0,
        lease_ttl: float = 3.0,
        publish_deadline: float = 1.0,
        payment_timeout: float | None = None,
        clocks: bool = False,
        disks: bool = False,
    ) -> None:
        self.variant = variant
        self.clocks = clocks  # every instance's wall clock under libfaketime, movable
        self.lease_ttl = lease_ttl
        self.publish_deadline = publish_deadline
        self.payment_timeout = payment_timeout
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ack_wait = ack_wait
        self.node_ttl = node_ttl
        # With `disks`, nats-server (not a cluster's) and PostgreSQL keep their data on a
        # tmpfs each, that the disk faults fill.
        self.disks: dict[str, Disk] = {}
        if disks:
            if variant != "cluster":
                self.disks["nats"] = Disk(root / "nats-disk", 128)
            self.disks["postgres"] = Disk(root / "postgres-disk", 512)
            for disk in self.disks.values():
                disk.mount()
        nats_root = self.disks["nats"].path if "nats" in self.disks else root
        postgres_root = self.disks["postgres"].path if "postgres" in self.disks else root
        self.nats: NatsServer | None = None
        self.cluster: NatsCluster | None = None
        self.valkey: ValkeyServer | None = None
        if variant == "cluster":
            self.cluster = NatsCluster(root / "cluster", advertise=False, route_proxies=True)
            self.nats_nodes = self.cluster.nodes
        else:
            self.nats = NatsServer(nats_root / "nats", sync="always")  # the product's default
            self.nats_nodes = [self.nats]
        if variant == "redis":
            self.valkey = ValkeyServer(root / "valkey")
        self.postgres = PostgresServer(postgres_root / "postgres")
        self.instances = [self._instance(index) for index in range(instances)]
        self._spawned: dict[int, float] = {}  # pid -> create time, of every process started

    @property
    def brokers(self) -> list[ServerProcess]:
        valkey: list[ServerProcess] = [self.valkey] if self.valkey else []
        return [*self.nats_nodes, *valkey, self.postgres]

    @property
    def nats_urls(self) -> list[str]:
        """The brokers' own addresses, for the checker (no proxy in between)."""
        return [node.url for node in self.nats_nodes]

    def _instance(self, index: int) -> Instance:
        nats_proxies = [TcpProxy("127.0.0.1", node.port) for node in self.nats_nodes]
        workdir = self.root / f"i{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        env = {
            "APP_SERVICE_NAME": SERVICE,
            "APP_DOMAIN": "app.chaos.domain",
            "QM_CHAOS_LOG": str(workdir / "effects.log"),
            "QM_CHAOS_INSTANCE": str(index),
            "APP_LEASE_TTL": str(self.lease_ttl),
            "APP_PUBLISH_DEADLINE": str(self.publish_deadline),
            "APP_PUBLISH_ATTEMPT_TIMEOUT": str(min(1.0, self.publish_deadline / 3)),
            "APP_NATS_URL": ",".join(proxy.url for proxy in nats_proxies),
            "APP_ACK_WAIT": str(self.ack_wait),
            "APP_NODE_TTL": str(self.node_ttl),
            "APP_DRAIN_TIMEOUT": "5",
            "APP_NATS_CONNECT_TIMEOUT": "30",
            "APP_ADMIN_TOKEN": ADMIN_TOKEN,
            "APP_REPLICAS": "3" if self.cluster else "1",
        }
        if self.payment_timeout is not None:
            env["APP_EXAMPLE_PAYMENT_TIMEOUT"] = str(self.payment_timeout)
        postgres_proxy = TcpProxy("127.0.0.1", self.postgres.port)
        env |= {
            "APP_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{postgres_proxy.port}/postgres",
            "APP_DATABASE_MIGRATE": "true",
        }
        broker_proxies = list(nats_proxies)
        if self.valkey is not None:
            redis_proxy = TcpProxy("127.0.0.1", self.valkey.port)
            broker_proxies.append(redis_proxy)
            env |= {
                "APP_REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/0",
                "APP_QOS1_TRANSPORT": "redis",
                "APP_QOS2_TRANSPORT": "redis",
                "APP_REDIS_CLAIM_IDLE": str(self.ack_wait),
            }
        if self.disks:
            # A stream may reserve no more than the server can store: the dead-letter
            # stream's default gigabyte is refused on a small disk.
            env["APP_DLQ_MAX_BYTES"] = str(16 * 1024 * 1024)
        clock = None
        if self.clocks:
            clock = Clock(workdir / "clock")
            env |= clock.env
        process = ServiceProcess(workdir, env)
        proxies = [*broker_proxies, postgres_proxy]
        return Instance(index, process, proxies, broker_proxies, [postgres_proxy], clock=clock)

    # -- whole system -------------------------------------------------------------------

    async def start(self) -> None:
        for hop in self._routes():
            await hop.start()
        await asyncio.gather(*(self._start_server(server) for server in self.brokers))
        if self.cluster is not None:
            await self.cluster.wait_ready(timeout=START_TIMEOUT)
        for instance in self.instances:
            for proxy in instance.proxies:
                await proxy.start()
        # One first, so the streams and buckets are made once, then the others together.
        await self._serve(self.instances[0])
        await asyncio.gather(*(self._serve(instance) for instance in self.instances[1:]))

    async def stop(self) -> None:
        await asyncio.gather(*(self._stop_instance(instance) for instance in self.instances))
        for instance in self.instances:
            for proxy in instance.proxies:
                await proxy.stop()
        await asyncio.gather(*(self._stop_server(server) for server in self.brokers))
        for hop in self._routes():
            await hop.stop()
        for name, disk in self.disks.items():
            for log in disk.path.rglob("*.log"):  # kept for the report, the disk goes
                shutil.copy(log, self.root / f"{name}-{log.name}")
            disk.unmount()

    def _routes(self) -> list[TcpProxy]:
        return list(self.cluster.route_proxies.values()) if self.cluster else []

    def leftovers(self) -> list[str]:
        """Every process this system started that still runs."""
        alive = []
        for pid, created in self._spawned.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.create_time() == created and process.status() != "zombie":
                    alive.append(f"{pid} {' '.join(process.cmdline()[:3])}")
        return alive

    async def ensure_running(self) -> list[str]:
        """Start any instance that is not running (each one is an error: nothing but the
        nemesis stops them, and it starts them again)."""
        errors = []
        for instance in self.instances:
            proc = instance.process.proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                errors.append(
                    f"{instance.name} exited by itself ({code}):\n{instance.process.log()}"
                )
                await self._serve(instance)
        return errors

    # -- the nemesis ----------------------------------------------------------------------

    async def inflict(self, fault: Fault) -> None:
        """Break what `fault` says, wait its duration, heal it."""
        kind = fault.kind.removesuffix("-long")
        if fault.target == "hostile":
            await _HOSTILE_FAULTS[kind](self, fault)
        elif kind.startswith(("instance", "net", "config", "clock")):
            instance = self.instances[int(fault.target[1:])]
            await _INSTANCE_FAULTS[kind](self, instance, fault)
        else:
            server = await self._server_of(fault)
            await _SERVER_FAULTS[kind.split("-", 1)[1]](self, server, fault)

    async def holder(self) -> int | None:
        """The index of the instance holding the chaos domain's lease, as /nodes says."""
        ids: dict[str, int] = {}
        holders: set[str] = set()
        async with httpx.AsyncClient(timeout=2) as client:
            for instance in self.instances:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    answer = (await client.get(f"{instance.url}/nodes?service={SERVICE}")).json()
                    ids[answer["self"]] = instance.index
                    for node in answer["nodes"]:
                        held = str(node.get("metadata", {}).get("leases", "")).split(",")
                        if LEASE in held:
                            holders.add(node["node_id"])
        for node_id in holders:
            if node_id in ids:
                return ids[node_id]
        return None

    async def _server_of(self, fault: Fault) -> ServerProcess:
        if fault.target == "valkey":
            assert self.valkey is not None
            return self.valkey
        if fault.target == "postgres":
            return self.postgres
        if self.cluster is None:
            assert self.nats is not None
            return self.nats
        if fault.target == "leader":
            return self.cluster.nodes[await self._leader()]
        return self.cluster.nodes[int(fault.target[1:])]

    async def _leader(self) -> int:
        """The node leading the orders stream, or the first one if none leads now."""
        assert self.cluster is not None
        with contextlib.suppress(Exception):
            async with self.cluster.client() as js:
                leader = await self.cluster.leader(js, ORDERS_STREAM)
                if leader is not None:
                    return leader
        return 0

    async def _kill_instance(self, instance: Instance, fault: Fault) -> None:
        instance.process.kill()
        await asyncio.sleep(fault.duration)
        await self._serve(instance)

    async def _pause_instance(self, instance: Instance, fault: Fault) -> None:
        await asyncio.to_thread(freeze, instance.process.pid)
        await asyncio.sleep(fault.duration)
        thaw(instance.process.pid)

    async def _drain_instance(self, instance: Instance, fault: Fault) -> None:
        await self._stop_instance(instance)
        await asyncio.sleep(fault.duration)
        await self._serve(instance)

    async def _cut(self, instance: Instance, fault: Fault) -> None:
        for proxy in instance.proxies:
            proxy.cut(refuse_for=fault.duration)
        await asyncio.sleep(fault.duration)

    async def _one_way(self, instance: Instance, fault: Fault) -> None:
        attribute = "swallow_up" if fault.detail == "up" else "swallow_down"
        for proxy in instance.proxies:
            setattr(proxy, attribute, True)
        await asyncio.sleep(fault.duration)
        for proxy in instance.proxies:
            setattr(proxy, attribute, False)
            proxy.cut(refuse_for=0)  # what was lost left the streams torn: TCP gives up too

    async def _cut_brokers(self, instance: Instance, fault: Fault) -> None:
        """The instance reaches PostgreSQL, but no broker: commands answer, events wait."""
        for proxy in instance.broker_proxies:
            proxy.cut(refuse_for=fault.duration)
        await asyncio.sleep(fault.duration)

    async def _cut_database(self, instance: Instance, fault: Fault) -> None:
        """The instance reaches the brokers, but not PostgreSQL: its handlers fail, its
        commands answer 503, and its relay stops."""
        for proxy in instance.database_proxies:
            proxy.cut(refuse_for=fault.duration)
        await asyncio.sleep(fault.duration)

    async def _change_lease_ttl(self, instance: Instance, fault: Fault) -> None:
        """A rolling restart of one instance with APP_LEASE_TTL four times the others', kept
        for the rest of the run: holders that disagree on the TTL must still never overlap."""
        await self._stop_instance(instance)
        instance.process.env["APP_LEASE_TTL"] = str(self.lease_ttl * 4)
        await asyncio.sleep(fault.duration)
        await self._serve(instance)

    async def _fallback_scheduler(self, instance: Instance, fault: Fault) -> None:
        """A rolling restart of one instance with APP_SCHEDULER=fallback, kept for the rest of
        the run: its delayed messages wait in its own scheduler's stream while the others'
        wait in the server's schedules; each must fire once, on time, and cancel as promised."""
        await self._stop_instance(instance)
        instance.process.env["APP_SCHEDULER"] = "fallback"
        await asyncio.sleep(fault.duration)
        await self._serve(instance)

    async def _jump_clock(self, instance: Instance, fault: Fault) -> None:
        """The instance's wall clock jumps by `detail` seconds, and back when healed."""
        if instance.clock is None:
            raise ChaosError("a clock fault in a system started without movable clocks")
        instance.clock.set(int(fault.detail))
        await asyncio.sleep(fault.duration)
        instance.clock.set(0)

    async def _slow(self, instance: Instance, fault: Fault) -> None:
        for proxy in instance.proxies:
            proxy.delay = float(fault.detail)
        await asyncio.sleep(fault.duration)
        for proxy in instance.proxies:
            proxy.delay = 0.0

    async def _kill_server(self, server: ServerProcess, fault: Fault) -> None:
        server.kill()
        await asyncio.sleep(fault.duration)
        await self._start_server(server)

    async def _restart_server(self, server: ServerProcess, fault: Fault) -> None:
        await self._stop_server(server)
        await asyncio.sleep(fault.duration)
        await self._start_server(server)

    async def _fill_disk(self, server: ServerProcess, fault: Fault) -> None:
        """The server's disk full for the fault's duration, then freed. nats-server is then
        restarted, as its operator (or a liveness probe) must: a stream whose write met ENOSPC
        keeps failing until the server restarts. PostgreSQL is started again only if the full
        disk brought it down (a WAL write that fails is a PANIC)."""
        disk = self.disks["postgres" if server is self.postgres else "nats"]
        disk.fill()
        await asyncio.sleep(fault.duration)
        disk.free()
        if server is not self.postgres:
            await self._restart_server(server, replace(fault, duration=0.0))
        elif not server.running:
            server.stop()
            await self._start_server(server)

    async def _partition_server(self, server: ServerProcess, fault: Fault) -> None:
        """A cluster node cut from its peers (its routes' proxies), while it and the instances
        connected to it run on: it loses quorum, its streams' leadership moves to the others,
        and its clients' requests fail until the routes are back."""
        assert self.cluster is not None
        self.cluster.partition(self.cluster.nodes.index(server), fault.duration)  # type: ignore[arg-type]
        await asyncio.sleep(fault.duration)

    async def _pause_server(self, server: ServerProcess, fault: Fault) -> None:
        """Every process of the server: PostgreSQL serves each connection from a child."""
        assert server.pid is not None
        pids = [server.pid]
        with contextlib.suppress(psutil.Error):
            pids += [child.pid for child in psutil.Process(server.pid).children(recursive=True)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                await asyncio.to_thread(freeze, pid)
        await asyncio.sleep(fault.duration)
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                thaw(pid)

    # -- processes, without blocking the loop the proxies run in --------------------------

    async def _start_server(self, server: ServerProcess) -> None:
        server.spawn()
        self._remember(server.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while not server.listening():
            if time.monotonic() > deadline:
                raise ChaosError(f"{server.name} did not listen: {server.log_tail()}")
            await asyncio.sleep(0.02)

    async def _stop_server(self, server: ServerProcess) -> None:
        if server.pid is not None and server.running:
            os.kill(server.pid, server.stop_signal)
            await _until(lambda: not server.running, 15.0)
        server.stop()  # SIGKILL if it is still there; closes its log

    async def _serve(self, instance: Instance) -> None:
        """Start the instance and wait until it answers /healthz."""
        process = instance.process
        process.start(wait=None)
        self._remember(process.pid)
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                if process.proc is not None and process.proc.poll() is not None:
                    code = process.proc.returncode
                    raise ChaosError(f"{instance.name} exited with {code}:\n{process.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{instance.url}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise ChaosError(f"{instance.name} not healthy:\n{process.log()}")
                await asyncio.sleep(0.1)
        instance.incarnation += 1
        instance.served_at = time.monotonic()
        instance.warm_rss = instance.rss = None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                self._remember(child.pid)

    async def _stop_instance(self, instance: Instance) -> None:
        proc = instance.process.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused one could not drain
        proc.send_signal(signal.SIGTERM)
        if not await _until(lambda: proc.poll() is not None, 15.0):
            proc.kill()
        await _until(lambda: proc.poll() is not None, 5.0)

    def _remember(self, pid: int | None) -> None:
        with contextlib.suppress(psutil.Error):
            if pid is not None:
                self._spawned[pid] = psutil.Process(pid).create_time()

    # -- what the checker reads -------------------------------------------------------------

    async def orders(self) -> dict[str, StoredOrder]:
        """Every order with its applied payment ids, read off PostgreSQL."""
        connection = await asyncpg.connect(self.postgres.url, timeout=5)
        try:
            rows = await connection.fetch(
                "SELECT o.order_id, o.sku, o.status, o.paid,"
                " coalesce(array_agg(p.payment_id ORDER BY p.created_at)"
                " FILTER (WHERE p.payment_id IS NOT NULL), '{}') AS payments"
                " FROM example_orders o LEFT JOIN example_payments p USING (order_id)"
                " GROUP BY o.order_id"
            )
        finally:
            await connection.close()
        return {
            row["order_id"]: StoredOrder(
                row["order_id"], row["sku"], row["status"], row["paid"], tuple(row["payments"])
            )
            for row in rows
        }

    async def dead_letters(self) -> list[tuple[str, str]]:
        """(message id, what it is and why) of every dead letter."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            page = (await client.get(f"{self.instances[0].url}/admin/dlq?limit=500")).json()
        return [
            (item["message_id"], f"{item['type']} {item['reason']}: {item['error']}")
            for item in page["items"]
        ]

    async def outbox(self) -> tuple[list[str], list[str]]:
        """The message ids of the outbox rows set aside as dead, and of those not sent yet."""
        connection = await asyncpg.connect(self.postgres.url, timeout=5)
        try:
            dead = await connection.fetch(
                "SELECT message_id FROM qosmesh_outbox WHERE dead_at IS NOT NULL"
            )
            unsent = await connection.fetch(
                "SELECT message_id FROM qosmesh_outbox WHERE sent_at IS NULL AND dead_at IS NULL"
            )
        finally:
            await connection.close()
        return [row["message_id"] for row in dead], [row["message_id"] for row in unsent]

    async def stream_ids(self, subject: str) -> list[str]:
        """The message ids (`qm-id`) of the stream holding `subject`, in the stream's order."""
        if self.valkey is not None:
            client = aioredis.Redis(host="127.0.0.1", port=self.valkey.port, decode_responses=True)
            try:
                entries = await client.xrange(subject) or []
            finally:
                await client.aclose()
            return [str((fields or {}).get("qm-id", "")) for _, fields in entries]
        nc = await nats.connect(servers=self.nats_urls, connect_timeout=2, error_cb=_quiet)
        try:
            js = nc.jetstream(timeout=5)
            name = stream_name(subject)
            state = (await js.stream_info(name)).state
            ids = []
            for seq in range(state.first_seq, state.last_seq + 1):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    msg = await js.get_msg(name, seq)
                    ids.append((msg.headers or {}).get("qm-id", ""))
            return ids
        finally:
            await nc.close()

    def effects(self) -> list[dict[str, Any]]:
        """Every line the chaos domain's handlers and singleton wrote, across incarnations."""
        lines: list[dict[str, Any]] = []
        for instance in self.instances:
            path = Path(instance.process.env["QM_CHAOS_LOG"])
            if not path.exists():
                continue
            for text in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(text))
        return lines

    async def views(self) -> tuple[set[str], list[set[str]]]:
        """The live instances' node ids, and the nodes each instance sees."""
        live, views = set(), []
        async with httpx.AsyncClient(timeout=2) as client:
            for instance in self.instances:
                answer = (await client.get(f"{instance.url}/nodes?service={SERVICE}")).json()
                live.add(answer["self"])
                views.append({node["node_id"] for node in answer["nodes"]})
        return live, views

    async def sample(self) -> None:
        """Each second: whether every running instance answers /healthz within a second, and
        its RSS and counters (the counters survive as the sum over incarnations)."""
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                await asyncio.gather(*(self._sample(client, i) for i in self.instances))
                await asyncio.sleep(1)

    async def _sample(self, client: httpx.AsyncClient, instance: Instance) -> None:
        process = instance.process
        if process.proc is None or process.proc.poll() is not None or not instance.served_at:
            return
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(process.pid).memory_info().rss
            instance.rss = rss
            if instance.warm_rss is None and time.monotonic() - instance.served_at > 3:
                instance.warm_rss = rss
        asked = time.monotonic()
        answered = False
        with contextlib.suppress(httpx.HTTPError):
            answered = (await client.get(f"{instance.url}/healthz")).status_code == 200
        instance.health.append((asked, answered))
        with contextlib.suppress(httpx.HTTPError):
            text = (await client.get(f"{instance.url}/metrics")).text
            for name, value in _counters(text).items():
                instance.counters[(instance.incarnation, name)] = value

    def counter(self, name: str) -> float:
        return sum(
            value
            for instance in self.instances
            for (_, counter), value in instance.counters.items()
            if counter == name
        )


COUNTERS = (
    "qosmesh_redeliveries",
    "qosmesh_dedupe_hits",
    "qosmesh_publish_retries",
    "qosmesh_qos0_lost",
)


def _counters(text: str) -> dict[str, float]:
    """The sums of the counters the report shows, from Prometheus text."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        for name in COUNTERS:
            if line.startswith(name) and "_total" in line.split(" ", 1)[0].split("{")[0]:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


async def _until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# -- hostile traffic: anyone on the bus, or with the database's credentials ---------------


async def _bus(system: System) -> NatsClient | None:
    """A connection of an outsider to the brokers; None while none of them answers."""
    with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
        return await nats.connect(
            servers=system.nats_urls, connect_timeout=1, allow_reconnect=False, error_cb=_quiet
        )
    return None


async def _quiet(error: Exception) -> None:
    return None


async def _ignore(msg: Msg) -> None:
    return None


async def _as_outsider(
    system: System, fault: Fault, act: Callable[[NatsClient, float], Awaitable[None]]
) -> None:
    """Run `act(nc, until)` until the fault's time is up, connecting again whenever the
    brokers drop the outsider (another fault may have them down meanwhile)."""
    until = time.monotonic() + fault.duration
    while time.monotonic() < until:
        nc = await _bus(system)
        if nc is None:
            await asyncio.sleep(0.5)
            continue
        try:
            await act(nc, until)
        except (nats.errors.Error, OSError, TimeoutError):
            await asyncio.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()


async def _stats_flood(system: System, fault: Fault) -> None:
    """2,000 `$SRV.STATS` requests at once, then 200 a second until the fault ends."""
    burst = [2000]

    async def flood(nc: NatsClient, until: float) -> None:
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=_ignore)
        while burst[0]:
            burst[0] -= 1
            await nc.publish("$SRV.STATS", b"", reply=inbox)
        while time.monotonic() < until:
            for _ in range(20):
                await nc.publish("$SRV.STATS", b"", reply=inbox)
            await asyncio.sleep(0.1)

    await _as_outsider(system, fault, flood)


async def _poison(system: System, fault: Fault) -> None:
    """Messages no handler can take, on the streams the service consumes: a body that is not
    JSON, a schema version from the future, and a header block near JetStream's limit. Each
    carries an id starting `poison-`: dead-lettering them is expected, nothing else is."""
    sent = [0]

    async def publish(nc: NatsClient, until: float) -> None:
        js = nc.jetstream()
        while time.monotonic() < until:
            for subject, body, extra in _POISONS:
                sent[0] += 1
                message_id = f"poison-{fault.at:g}-{sent[0]}"
                headers = {"Nats-Msg-Id": message_id, "qm-id": message_id, **extra}
                await js.publish(subject, body, headers=headers, timeout=2)
            await asyncio.sleep(0.2)

    await _as_outsider(system, fault, publish)


_POISONS: list[tuple[str, bytes, dict[str, str]]] = [
    ("chaos.charged", b"\x00not json", {"qm-type": "Charged", "qm-qos": "2"}),
    ("chaos.charged", b"{}", {"qm-type": "Charged", "qm-qos": "2", "qm-schema": "99"}),
    ("chaos.stepped", b"{}", {"qm-type": "Stepped", **{f"x-{i}": "h" * 240 for i in range(200)}}),
]


async def _outbox_poison(system: System, fault: Fault) -> None:
    """Rows written straight into the outbox that can never be sent: one for a transport the
    service does not have, one with a 2 MiB body, one with a header block past JetStream's
    64 KiB, one due in a year (more than the server's schedules keep). Each has its own
    ordering key: a row of a transport no instance has waits for one that has it, holding up
    its key meanwhile. The relay must set them aside while every other row goes on."""
    transport = "redis" if system.valkey is not None else "jetstream"
    stamp = f"{fault.at:g}"
    huge = {f"x-poison-{n}": "h" * 250 for n in range(300)}
    a_year = (datetime.now(UTC) + timedelta(days=365)).isoformat(timespec="milliseconds")
    too_late = {"qm-deliver-at": a_year.replace("+00:00", "Z")}
    rows: list[tuple[str, str, str, dict[str, str], bytes]] = [
        (f"poison-out-{stamp}-a", "chaos.stepped", "nowhere", {}, b"{}"),
        (f"poison-out-{stamp}-b", "chaos.stepped", transport, {}, b"x" * (2 * 1024 * 1024)),
        (f"poison-out-{stamp}-c", "chaos.stepped", transport, huge, b"{}"),
        (f"poison-out-{stamp}-d", "chaos.reminded", transport, too_late, b"{}"),
    ]
    connection = await _patiently(system.postgres.url)
    if connection is None:
        return  # the database stayed away the whole time: nothing was written
    try:
        # Each carries its id (qm-id): where a broker takes it (Redis keeps any size) and the
        # consumer dead-letters it, the dead letter is known for the poison it is.
        for message_id, subject, via, extra, body in rows:
            headers = json.dumps({"qm-id": message_id, **extra})
            await connection.execute(
                "INSERT INTO qosmesh_outbox (message_id, subject, qos, transport, ordering_key,"
                " headers, body) VALUES ($1::text, $2, 1, $3, $1::text, $4::jsonb, $5)",
                message_id,
                subject,
                via,
                headers,
                body,
            )
        await connection.execute("SELECT pg_notify('qosmesh_outbox', '')")
    finally:
        await connection.close()
    await asyncio.sleep(fault.duration)


async def _patiently(url: str, patience: float = 30.0) -> asyncpg.Connection | None:
    """A connection to PostgreSQL, waited for while another fault has it down."""
    give_up = time.monotonic() + patience
    while time.monotonic() < give_up:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            return await asyncpg.connect(url, timeout=2)
        await asyncio.sleep(0.5)
    return None


HostileFault = Callable[[System, Fault], Awaitable[None]]
_HOSTILE_FAULTS: dict[str, HostileFault] = {
    "stats-flood": _stats_flood,
    "poison": _poison,
    "outbox-poison": _outbox_poison,
}

InstanceFault = Callable[[System, Instance, Fault], Awaitable[None]]
ServerFault = Callable[[System, ServerProcess, Fault], Awaitable[None]]
_INSTANCE_FAULTS: dict[str, InstanceFault] = {
    "instance-kill": System._kill_instance,
    "instance-pause": System._pause_instance,
    "instance-drain": System._drain_instance,
    "net-cut": System._cut,
    "net-oneway": System._one_way,
    "net-latency": System._slow,
    "net-broker": System._cut_brokers,
    "net-db": System._cut_database,
    "config-lease-ttl": System._change_lease_ttl,
    "config-scheduler": System._fallback_scheduler,
    "clock-jump": System._jump_clock,
}
_SERVER_FAULTS: dict[str, ServerFault] = {
    "kill": System._kill_server,
    "restart": System._restart_server,
    "pause": System._pause_server,
    "partition": System._partition_server,
    "disk": System._fill_disk,
}
