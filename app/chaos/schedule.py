"""The nemesis's plan: a seeded schedule of faults, drawn before anything runs.

A fault hits one lane (an instance with its network, the NATS broker or one cluster node at a
time, Valkey, PostgreSQL); faults on one lane never overlap, faults on different lanes may,
and `cover` schedules make sure at least two do. The same seed gives the same schedule.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Literal

Variant = Literal["jetstream", "redis", "cluster"]
VARIANTS: tuple[Variant, ...] = ("jetstream", "redis", "cluster")

INSTANCE_KINDS = ("instance-kill", "instance-pause", "instance-drain")
NETWORK_KINDS = ("net-cut", "net-oneway", "net-latency")
BROKER_KINDS = ("broker-kill", "broker-restart", "broker-pause")
VALKEY_KINDS = ("valkey-kill", "valkey-restart", "valkey-pause")
POSTGRES_KINDS = ("postgres-kill", "postgres-restart", "postgres-pause")
CLASSIC_KINDS = INSTANCE_KINDS + NETWORK_KINDS + BROKER_KINDS + POSTGRES_KINDS
# Beyond every threshold that matters (publish deadline, lease TTL, 3 x ack wait).
LONG_KINDS = ("instance-pause-long", "net-cut-long", "broker-pause-long")
# Cut from one side only: the brokers (NATS and Valkey), or the database.
ONE_SIDED_KINDS = ("net-broker", "net-db")
# Aimed at the instance holding the chaos domain's lease, found through /nodes.
HOLDER_KINDS = ("holder-kill", "holder-pause")
# A rolling restart of one instance with a setting changed, kept for the rest of the run:
# APP_LEASE_TTL four times the others', or APP_SCHEDULER=fallback (delayed messages moved by
# the service's own scheduler while the others use the server's).
CONFIG_KINDS = ("config-lease-ttl", "config-scheduler")
# An instance's wall clock jumps ahead or back while it runs, and back again when healed.
CLOCK_KINDS = ("clock-jump",)
# From anyone on the bus or the database: $SRV.STATS requests, undecodable and unknown-version
# messages on the service's subjects, outbox rows that can never be sent.
HOSTILE_KINDS = ("stats-flood", "poison", "outbox-poison")
NEW_KINDS = LONG_KINDS + ONE_SIDED_KINDS + HOLDER_KINDS + CONFIG_KINDS + CLOCK_KINDS + HOSTILE_KINDS
# A full disk under nats-server (one node only) or PostgreSQL: a tmpfs filled to the last byte,
# then freed; nats-server is restarted after (a stream that met ENOSPC stays failed until then).
DISK_KINDS = ("broker-disk", "postgres-disk")
# A cluster node cut from its peers by its routes' proxies; it and its clients run on.
CLUSTER_KINDS = ("broker-partition",)
NATS_ONLY = ("poison", "config-scheduler")  # NATS subjects; JetStream's scheduler
NEEDS_FAKETIME = CLOCK_KINDS


def kinds_of(
    variant: Variant, classic: bool = False, faketime: bool = True, tmpfs: bool = True
) -> tuple[str, ...]:
    """Every fault kind that applies to `variant` (`classic`: the first set only;
    `faketime`: whether libfaketime is there for the clock faults; `tmpfs`: whether a tmpfs
    can be mounted for the disk faults)."""
    kinds: tuple[str, ...] = CLASSIC_KINDS if classic else CLASSIC_KINDS + NEW_KINDS
    if not faketime:
        kinds = tuple(kind for kind in kinds if kind not in NEEDS_FAKETIME)
    if not tmpfs:
        kinds = tuple(kind for kind in kinds if kind not in DISK_KINDS)
    if variant == "cluster":
        kinds = tuple(kind for kind in kinds if kind != "broker-disk")
    if variant == "redis":
        kinds = tuple(kind for kind in kinds if kind not in NATS_ONLY)
        return kinds + VALKEY_KINDS
    if variant == "cluster" and not classic:
        return kinds + CLUSTER_KINDS
    return kinds


@dataclass(frozen=True, slots=True)
class Fault:
    """`kind` hits `target` at `at` seconds into the run, and is healed `duration` later.

    Targets: `i<k>` (instance k; network kinds cut its links to the brokers, clock kinds move
    its wall clock), `nats` (the one
    nats-server), `n<k>` or `leader` (a cluster node; the leader of the orders stream is looked
    up when the fault starts), `valkey`, `postgres`, `holder` (the instance holding the chaos
    lease when the fault starts), `hostile` (traffic from outside the service). `detail` is the
    direction of a one-way loss (`up`: instance to broker, `down`: back) or the added latency
    in seconds.
    """

    at: float
    kind: str
    target: str
    duration: float
    detail: str = ""

    @property
    def end(self) -> float:
        return self.at + self.duration

    @property
    def lane(self) -> str:
        if self.target.startswith("i"):
            return self.target
        if self.target in ("valkey", "postgres", "hostile", "holder"):
            return self.target
        return "broker"

    def describe(self) -> str:
        detail = f" {self.detail}" if self.detail else ""
        return f"{self.at:5.1f}s {self.kind} {self.target}{detail} for {self.duration:.1f}s"


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    variant: Variant
    window: float
    instances: int
    faults: tuple[Fault, ...]
    payment_timeout: float | None = None
    """APP_EXAMPLE_PAYMENT_TIMEOUT of the instances: unpaid orders are cancelled after it."""

    def overlaps(self) -> int:
        """How many pairs of faults are active at the same time."""
        faults = self.faults
        return sum(
            1
            for i, a in enumerate(faults)
            for b in faults[i + 1 :]
            if a.at < b.end and b.at < a.end
        )

    def as_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "variant": self.variant,
            "window": self.window,
            "instances": self.instances,
            "faults": [asdict(fault) for fault in self.faults],
            "payment_timeout": self.payment_timeout,
        }


def plan(
    seed: int,
    variant: Variant,
    window: float,
    *,
    instances: int = 3,
    ack_wait: float = 2.0,
    lease_ttl: float = 3.0,
    publish_deadline: float = 1.0,
    cover: bool = True,
    classic: bool = False,
    only: tuple[str, ...] = (),
    also: tuple[str, ...] = (),
    payment_timeout: float | None = None,
    faketime: bool = True,
    tmpfs: bool = True,
) -> Schedule:
    """The faults of one run. `cover`: every kind of the variant once, in a random order and
    at random moments; otherwise kinds drawn at random until the window is full. `classic`:
    only the first set of kinds (the CI seeds kept from before the others). `only`: these
    kinds and no others (to force the fault a finding needs)."""
    rng = random.Random(f"{seed}/{variant}")  # noqa: S311 (seeded on purpose: replayable)
    kinds = list(only or kinds_of(variant, classic, faketime, tmpfs)) + list(also)
    longest = max(publish_deadline, lease_ttl, 3 * ack_wait)
    if cover:
        rng.shuffle(kinds)
    else:
        kinds = [rng.choice(kinds) for _ in range(int(window / 2))]
    free: dict[str, float] = {}
    faults: list[Fault] = []
    for kind in kinds:
        fault = _draw(rng, kind, variant, instances, ack_wait, longest, window)
        if cover and variant == "cluster" and kind == "broker-kill":
            fault = Fault(fault.at, kind, "leader", fault.duration)  # the leader, every time
        start = max(fault.at, free.get(fault.lane, 0.0))
        if start + fault.duration > window:
            if not cover:
                continue
            start = free.get(fault.lane, 0.0)  # every kind runs, if need be past the window
        fault = _moved(fault, start)
        free[fault.lane] = fault.end + rng.uniform(0.5, 1.5)
        faults.append(fault)
    faults.sort(key=lambda fault: fault.at)
    schedule = Schedule(seed, variant, window, instances, tuple(faults), payment_timeout)
    if cover and schedule.overlaps() == 0 and len(faults) > 1:
        schedule = _force_overlap(schedule)
    return schedule


def _draw(
    rng: random.Random,
    kind: str,
    variant: Variant,
    instances: int,
    ack_wait: float,
    longest: float,
    window: float,
) -> Fault:
    """One fault of `kind`: its target and how long it lasts, each with the bound it models."""
    detail = ""
    if kind.startswith(("instance", "net", "config", "clock")):
        target = f"i{rng.randrange(instances)}"
    elif kind.startswith("holder"):
        target = "holder"
    elif kind in HOSTILE_KINDS:
        target = "hostile"
    elif kind.startswith("valkey"):
        target = "valkey"
    elif kind.startswith("postgres"):
        target = "postgres"
    elif variant == "cluster":
        target = rng.choice(["leader", "leader", "n0", "n1", "n2"])
    else:
        target = "nats"
    if kind.endswith("-long") or kind == "broker-partition":
        duration = longest + rng.uniform(1.0, 3.0)  # past every deadline, TTL and hold
    elif kind == "stats-flood":
        duration = rng.uniform(4.0, 8.0)  # a burst of 2,000, then 200 a second
    elif kind == "poison":
        duration = rng.uniform(1.0, 2.0)  # published for this long
    elif kind == "outbox-poison" or kind.startswith("config"):
        duration = 0.5  # rows written at once; an instance stopped and started again
    elif kind == "clock-jump":
        # An NTP step or a VM resumed: further than a claim's stale time, a lease's TTL and
        # the server clock's re-measure (10 s), ahead or back; kept until healed.
        jump = rng.randint(max(12, int(longest) * 2), 60) * rng.choice([1, -1])
        detail, duration = f"{jump:+d}", rng.uniform(3.0, 8.0)
    elif kind in ONE_SIDED_KINDS:
        duration = rng.uniform(0.5, 3.0)  # a blip shorter than a claim's stale time, or longer
    elif kind.endswith("pause"):
        duration = ack_wait + rng.uniform(0.5, 1.5)  # past the ack wait: redelivery elsewhere
    elif kind.endswith("kill"):
        duration = rng.uniform(1.0, 3.0)  # down for this long, then started again
    elif kind in DISK_KINDS:
        duration = rng.uniform(2.0, 5.0)  # full for this long, then freed
    elif kind.endswith(("restart", "drain")):
        duration = 0.5  # stopped gracefully and started at once
    elif kind == "net-latency":
        delay = rng.uniform(1.2, 2.0)  # each way: the round trip outlasts the ack timeouts
        detail, duration = f"{delay:.2f}", rng.uniform(3.0, 5.0)
    elif kind == "net-oneway":
        detail, duration = rng.choice(["up", "down"]), rng.uniform(1.5, 3.0)
    else:
        duration = rng.uniform(1.5, 4.0)
    at = rng.uniform(0.5, max(0.5, window - duration))
    return Fault(round(at, 2), kind, target, round(duration, 2), detail)


def _moved(fault: Fault, at: float) -> Fault:
    return Fault(round(at, 2), fault.kind, fault.target, fault.duration, fault.detail)


def _force_overlap(schedule: Schedule) -> Schedule:
    """Move a fault of another lane to start inside the first one, where its lane is free."""
    faults = list(schedule.faults)
    first = faults[0]
    start = first.at + min(0.3, first.duration / 2)
    for index, other in enumerate(faults):
        if other.lane == first.lane:
            continue
        moved = _moved(other, start)
        if all(
            f is other or f.lane != other.lane or f.end <= moved.at or f.at >= moved.end
            for f in faults
        ):
            faults[index] = moved
            break
    faults.sort(key=lambda fault: fault.at)
    return replace(schedule, faults=tuple(faults))
