"""`python -m app` as a real process: probes, signals, embedded broker, broker loss."""

import re
import signal
import time

import httpx
import nats
import psutil
import pytest

pytestmark = pytest.mark.slow


def embedded_url(service) -> str:
    urls = re.findall(r"using embedded nats-server at (nats://[\d.:]+)", service.log())
    assert urls, service.log()
    return str(urls[-1])


def nats_children(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if "nats-server" in p.name()]


def embedded_servers(pid: int) -> list[psutil.Process]:
    """The embedded nats-server and PostgreSQL (its postmaster and the processes it forked)."""
    names = ("nats-server", "postgres")
    return [p for p in psutil.Process(pid).children(recursive=True) if p.name() in names]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_leaves_no_embedded_server_behind(service_process, sig):
    service = service_process(wait="/readyz")
    assert httpx.get(service.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(service.url + "/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert ready.json()["status"] == "ready"
    assert {"nats": "ok", "discovery": "ok"}.items() <= checks.items()
    children = embedded_servers(service.pid)
    assert len(nats_children(service.pid)) == 1
    # The embedded PostgreSQL runs when the domain keeps data (the example does).
    assert any(p.name() == "postgres" for p in children) == ("database" in checks)
    assert set(checks.values()) == {"ok"}

    assert service.stop(sig) is not None
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_sigkill_of_the_service_takes_its_embedded_servers_along(service_process):
    service = service_process(wait="/readyz")
    children = embedded_servers(service.pid)
    service.kill()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


async def test_second_start_reuses_the_data_dir(service_process):
    service = service_process(wait="/readyz")
    nc = await nats.connect(embedded_url(service))
    kv = await nc.jetstream().create_key_value(bucket="reuse")
    await kv.put("k", b"still here")
    await nc.close()
    service.stop()

    service.start(wait="/readyz")
    nc = await nats.connect(embedded_url(service))
    kv = await nc.jetstream().key_value("reuse")
    assert (await kv.get("k")).value == b"still here"
    await nc.close()


def test_two_instances_cannot_share_an_embedded_store(service_process, tmp_path):
    first = service_process(wait="/readyz")
    second = service_process({"APP_DATA_DIR": first.env["APP_DATA_DIR"]}, wait=None)
    assert second.proc is not None
    assert second.proc.wait(30) != 0
    assert "is in use by another instance" in second.log()


def wait_status(url: str, status: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(url, timeout=1).status_code == status:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} did not answer {status} within {timeout}s")


def test_readyz_follows_the_broker_without_a_restart(service_process, nats_server):
    """A service without a database (no domain): NATS away is not ready. (With one, the
    database decides: tests/example/test_orders.py.)"""
    env = {"APP_NATS_URL": nats_server.url, "APP_DOMAIN": ""}
    service = service_process(env, wait="/readyz")
    nats_server.kill()
    wait_status(service.url + "/readyz", 503, timeout=5)
    body = httpx.get(service.url + "/readyz").json()
    assert body["status"] == "not_ready"
    assert body["checks"]["nats"] == "disconnected"
    assert httpx.get(service.url + "/healthz").status_code == 200

    nats_server.start()
    wait_status(service.url + "/readyz", 200, timeout=5)
    assert service.proc is not None
    assert service.proc.poll() is None
