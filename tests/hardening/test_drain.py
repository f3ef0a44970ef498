"""SIGTERM during a burst of slow handlers: what finished is acked and never redone, what did
not finish is redelivered to the other instance, and the node leaves discovery gracefully."""

import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def events(path: Path) -> dict[str, dict[int, list[int]]]:
    seen: dict[str, dict[int, list[int]]] = {"start": defaultdict(list), "done": defaultdict(list)}
    if path.exists():
        for line in path.read_text().splitlines():
            kind, n, pid = line.split()
            seen[kind][int(n)].append(int(pid))
    return seen


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"{what} not reached within {timeout}s")


def test_sigterm_settles_in_flight_messages_and_leaves_gracefully(
    service_process, nats_server, tmp_path
):
    log = tmp_path / "jobs.log"
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DOMAIN": "tests.hardening.slow_domain",
        "SLOW_JOBS_LOG": str(log),
        "PYTHONPATH": str(ROOT),
        "APP_DRAIN_TIMEOUT": "1.5",
        "APP_ACK_WAIT": "3",
        "APP_CONSUMER_CONCURRENCY": "4",
        "APP_NODE_TTL": "10",
    }
    leaving = service_process(env, wait="/readyz")
    staying = service_process(env, wait="/readyz")
    jobs = {n: (0.3 if n % 2 else 4.0) for n in range(24)}
    with httpx.Client(base_url=leaving.url) as client:
        for n, seconds in jobs.items():
            assert client.post("/jobs", json={"n": n, "seconds": seconds}).status_code == 202

    # SIGTERM once the leaving instance has started short jobs and runs a long one that began
    # less than a second ago: it cannot finish within the 1.5 s drain timeout.
    first_seen: dict[int, float] = {}

    def holds_mixed_work() -> bool:
        now = time.monotonic()
        seen = events(log)
        started = [n for n, pids in seen["start"].items() if leaving.pid in pids]
        for n in started:
            first_seen.setdefault(n, now)
        running = [n for n in started if leaving.pid not in seen["done"].get(n, [])]
        fresh_long = any(jobs[n] > 1 and now - first_seen[n] < 1.0 for n in running)
        return fresh_long and any(jobs[n] < 1 for n in started)

    wait_for(holds_mixed_work, 15, "a mix of jobs on the leaving instance")
    signalled = time.monotonic()
    leaving.send_signal(signal.SIGTERM)

    with httpx.Client(base_url=staying.url) as client:
        wait_for(
            lambda: leaving_gone(client, leaving.url), 5, "the leaving node gone from the view"
        )
    left_after = time.monotonic() - signalled
    assert leaving.proc is not None
    assert leaving.proc.wait(30) in (0, -signal.SIGTERM)

    def all_done():
        seen = events(log)
        return seen if set(seen["done"]) == set(jobs) else None

    final = wait_for(all_done, 30, "every job done")
    done_by_leaving = {n for n, pids in final["done"].items() if leaving.pid in pids}
    started_by_leaving = {n for n, pids in final["start"].items() if leaving.pid in pids}
    cut_short = started_by_leaving - done_by_leaving
    print(
        f"\nleft the view {left_after:.2f}s after SIGTERM; leaving instance finished "
        f"{len(done_by_leaving)}, was cut short on {len(cut_short)} (redelivered)"
    )
    assert cut_short, "no handler outlived the drain timeout"
    for n in done_by_leaving:  # acked there: never done again
        assert final["done"][n] == [leaving.pid]
    for n in cut_short:  # not acked: done by the other instance
        assert final["done"][n] == [staying.pid]
    assert left_after < 2.0
    assert os.path.exists(log)


def leaving_gone(client: httpx.Client, url: str) -> bool:
    nodes = client.get("/nodes").json()["nodes"]
    return all(node["address"] != url for node in nodes)
