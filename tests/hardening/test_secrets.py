"""Secrets reach no log line, no /nodes, no /metrics, no OpenAPI document, no error body."""

import httpx
import pytest

pytestmark = pytest.mark.slow

ADMIN = "adm1n-t0ken-0123456789"
REDIS_PW = "r3d1s-pw-0123456789"
NATS_PW = "n4ts-pw-0123456789"


def test_no_secret_leaks_anywhere(service_process, tmp_path):
    from app.brokers.embedded import NatsServer, ValkeyServer

    nats = NatsServer(tmp_path / "nats", extra_args=["--user", "svc", "--pass", NATS_PW])
    redis = ValkeyServer(tmp_path / "valkey", extra_args=["--requirepass", REDIS_PW])
    nats.start()
    redis.start()
    try:
        service = service_process(
            {
                "APP_NATS_URL": nats.url,
                "APP_NATS_USER": "svc",
                "APP_NATS_PASSWORD": NATS_PW,
                "APP_REDIS_URL": f"redis://:{REDIS_PW}@127.0.0.1:{redis.port}/0",
                "APP_QOS1_TRANSPORT": "redis",
                "APP_ADMIN_TOKEN": ADMIN,
                "APP_LOG_LEVEL": "DEBUG",
            },
            wait="/readyz",
        )
        seen = []
        with httpx.Client(base_url=service.url) as client:
            for path in ("/nodes", "/metrics", "/openapi.json", "/readyz", "/cluster/health"):
                seen.append(client.get(path).text)
            seen.append(client.get("/admin/dlq", headers={"Authorization": "Bearer x"}).text)
            seen.append(client.get("/admin/dlq", headers={"Authorization": f"Bearer {ADMIN}"}).text)
            seen.append(client.post("/orders", json={"sku": REDIS_PW, "quantity": "x"}).text)
            seen.append(client.post("/orders", json={"sku": "a", "quantity": 1}).text)
        redis.kill()  # errors now name the broker: they must not name its password
        with httpx.Client(base_url=service.url) as client:
            seen.append(client.get("/readyz").text)
        redis.start()
        service.stop()
        seen.append(service.log())
    finally:
        nats.stop()
        redis.stop()
    everything = "\n".join(seen)
    for secret in (ADMIN, NATS_PW, REDIS_PW):  # REDIS_PW was also sent as bad input
        assert secret not in everything
