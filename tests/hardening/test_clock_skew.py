"""Two instances whose clocks are a minute apart (one 30 s ahead, one 30 s behind, by
libfaketime; the brokers keep the true time, as the reference): every QoS 2 effect is applied
once, and no delayed message fires before its due time, on every scheduler."""

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from app.testing import eventually
from app.testing.faults import FAKETIME

pytestmark = pytest.mark.slow

DOMAIN = "tests.hardening.skew_domain"
ROOT = Path(__file__).resolve().parents[2]
CHARGES = 500
DELAYED = 10
DELAY = 3.0


@pytest.mark.skipif(FAKETIME is None, reason="needs Debian's faketime (.ci/run installs it)")
@pytest.mark.parametrize("scheduler", ["native", "fallback", "redis"])
async def test_skewed_hosts_apply_each_effect_once_and_fire_nothing_early(
    scheduler, service_process, nats_server, redis_server, tmp_path
):
    ledger = tmp_path / "ledger"
    ledger.touch()
    env = {
        "APP_DOMAIN": DOMAIN,
        "APP_SERVICE_NAME": "skew",
        "APP_NATS_URL": nats_server.url,
        "LEDGER_FILE": str(ledger),
        "PYTHONPATH": str(ROOT),
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    if scheduler == "redis":
        env.update(
            APP_REDIS_URL=redis_server.url, APP_QOS1_TRANSPORT="redis", APP_QOS2_TRANSPORT="redis"
        )
    else:
        env["APP_SCHEDULER"] = scheduler
    ahead = service_process({**env, "FAKETIME": "+30s"}, wait="/readyz")
    behind = service_process({**env, "FAKETIME": "-30s"}, wait="/readyz")
    due: dict[str, float] = {}  # message id -> when it may fire, by this (true) clock
    async with httpx.AsyncClient(timeout=10) as client:
        for n in range(DELAYED):
            for instance in (ahead, behind):
                sent = time.time()
                answer = await client.post(
                    f"{instance.url}/charges", json={"n": -1 - n, "delay": DELAY}
                )
                assert answer.status_code == 202, answer.text
                due[answer.json()["message_id"]] = sent + DELAY
        published: set[str] = set()
        for n in range(CHARGES):
            instance = (ahead, behind)[n % 2]
            answer = await client.post(f"{instance.url}/charges", json={"n": n})
            assert answer.status_code == 202, answer.text
            published.add(answer.json()["message_id"])
    seen: dict[str, float] = {}

    def read() -> bool:
        now = time.time()
        for line in ledger.read_text().splitlines():
            seen.setdefault(line.split(" ")[0], now)
        return len(seen) >= CHARGES + len(due)

    await eventually(read, timeout=60, interval=0.05)
    await asyncio.sleep(2)  # room for a second application, were there one
    lines = [line.split(" ")[0] for line in ledger.read_text().splitlines()]
    applied_twice = {m for m in lines if lines.count(m) > 1}
    assert not applied_twice
    assert set(lines) == published | set(due)
    early = {m: round(due[m] - seen[m], 2) for m in due if seen[m] < due[m]}
    assert not early, f"fired before their time (seconds early): {early}"
