"""How late delayed messages fire, measured on real processes: 200 messages due over 8 s,
the instance that would fire them restarted halfway, on the server's schedules and on the
lease holder's fallback. The lateness of each is its stream timestamp (when it landed on its
subject) minus its `qm-deliver-at`."""

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import httpx
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from app.messages import due_of
from app.testing import ServiceProcess
from tests.transports.conftest import Ping, running_bus

MESSAGES = 200
SPREAD = 8.0
LEASE_TTL = 3.0


def holder_of(instances: list[ServiceProcess], lease: str) -> ServiceProcess:
    """The instance whose discovery metadata names `lease` (the first one, when none does)."""
    nodes = httpx.get(f"{instances[0].url}/nodes", timeout=5).json()["nodes"]
    for node in nodes:
        if lease in node["metadata"].get("leases", "").split(","):
            return next(i for i in instances if node["address"].endswith(f":{i.port}"))
    return instances[0]


async def fired(js: JetStreamContext) -> int:
    info = await js.stream_info("SVC_PING", subjects_filter="svc.ping")
    return int((info.state.subjects or {}).get("svc.ping", 0))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheduler", ["native", "fallback"])
async def test_delayed_messages_fire_on_time_across_an_instance_restart(
    scheduler, nats_server, service_process, bus_settings
):
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_SERVICE_NAME": "svc",
        "APP_DOMAIN": "",
        "APP_SCHEDULER": scheduler,
        "APP_LEASE_TTL": str(LEASE_TTL),
    }
    instances = [service_process(env) for _ in range(2)]
    async with running_bus(bus_settings(scheduler=scheduler)) as running:
        start = datetime.now(UTC) + timedelta(seconds=2)
        step = SPREAD / MESSAGES
        messages = [Ping(n=n) for n in range(MESSAGES)]
        await asyncio.gather(
            *(running.bus.publish(m, at=start + timedelta(seconds=m.n * step)) for m in messages)
        )
        await asyncio.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds() + SPREAD / 2))
        restarted = await asyncio.to_thread(holder_of, instances, "scheduler-jetstream")
        await asyncio.to_thread(restarted.stop)
        await asyncio.to_thread(restarted.start)

        js = running.brokers.js
        give_up = time.monotonic() + SPREAD + 20
        while await fired(js) < MESSAGES:
            assert time.monotonic() < give_up, "not every message fired"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        late: list[float] = []
        seq = 0
        while len(late) <= MESSAGES:
            try:
                kept = await js.get_msg("SVC_PING", seq + 1, subject="svc.ping", next=True)
            except nats.js.errors.NotFoundError:
                break
            seq = kept.seq or 0
            due = due_of(dict(kept.headers or {}))
            assert due is not None, kept.headers
            assert kept.time is not None
            late.append((kept.time - due).total_seconds())
    assert len(late) == MESSAGES, f"{len(late)} fired (copies or losses)"
    late.sort()
    p50, p99 = statistics.median(late), late[int(len(late) * 0.99) - 1]
    print(
        f"\n{scheduler}: {MESSAGES} messages over {SPREAD:.0f} s, one instance restarted: "
        f"late p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {late[-1] * 1000:.0f} ms, "
        f"min {late[0] * 1000:.0f} ms"
    )
    assert late[0] >= 0, "a message fired before its time"
    assert p99 < 1.5
