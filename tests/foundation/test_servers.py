"""The real-server fixtures: start, kill and restart keep their stores; freeze stops them."""

import asyncio

import httpx
import nats
import pytest
import redis.asyncio as aioredis
from nats.js.api import StreamConfig
from pydantic import ValidationError

from app.brokers import open_brokers
from app.brokers.embedded import NatsServer, free_port
from app.settings import Settings, describe_validation_error
from app.testing.faults import freeze, thaw
from app.transports.registry import needs_redis


async def test_nats_server_keeps_jetstream_data_across_kill_and_restart(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
    ack = await js.publish("t.one", b"kept")
    await nc.close()

    nats_server.kill()
    assert not nats_server.running
    nats_server.start()

    nc = await nats.connect(nats_server.url)
    msg = await nc.jetstream().get_msg("T", ack.seq)
    assert msg.data == b"kept"
    await nc.close()


async def test_valkey_server_keeps_acknowledged_writes_across_kill(redis_server):
    client = aioredis.from_url(redis_server.url)
    await client.xadd("s", {"k": "v"})
    await client.aclose()

    redis_server.kill()
    redis_server.start()

    client = aioredis.from_url(redis_server.url)
    assert await client.xlen("s") == 1
    await client.aclose()


@pytest.mark.parametrize(
    ("sync", "expected"),
    [("always", {"sync_always": True}), ("10s", {"sync_interval": 10 * 10**9})],
)
def test_embedded_nats_server_flushes_as_app_nats_sync_says(tmp_path, sync, expected):
    monitor = free_port()
    server = NatsServer(tmp_path / "nats", sync=sync, extra_args=["-m", str(monitor)])
    server.start()
    try:
        varz = httpx.get(f"http://127.0.0.1:{monitor}/varz", timeout=5).json()
    finally:
        server.stop()
    config = varz["jetstream"]["config"]
    assert {key: config.get(key) for key in expected} == expected


async def test_the_service_starts_its_embedded_broker_with_every_write_synced(settings_for):
    """APP_NATS_SYNC defaults to `always`: nothing acknowledged waits for a timer to be safe."""
    settings = Settings.model_validate({"data_dir": settings_for().data_dir})
    assert settings.nats_sync == "always"
    async with open_brokers(settings, redis=needs_redis(settings)) as brokers:
        assert brokers.nc.is_connected
        config = (settings.data_path / "nats" / "jetstream.conf").read_text()
    assert "sync_interval: always" in config


def test_a_bad_app_nats_sync_is_refused_naming_the_variable():
    with pytest.raises(ValidationError) as info:
        Settings.model_validate({"nats_sync": "sometimes"})
    assert describe_validation_error(info.value).startswith("configuration error: APP_NATS_SYNC:")


async def test_a_frozen_broker_answers_nothing_from_the_moment_freeze_returns(nats_server):
    """SIGSTOP stops each thread when it next runs: `freeze` returns only once all have, so a
    request sent afterwards cannot be answered, however loaded the machine."""
    nc = await nats.connect(nats_server.url, ping_interval=60)
    try:
        await nc.jetstream().add_stream(StreamConfig(name="F", subjects=["f"]))
        assert nats_server.pid is not None
        for _ in range(20):
            freeze(nats_server.pid)
            try:
                replies = [
                    asyncio.create_task(nc.request("f", b"x", timeout=0.05)) for _ in range(5)
                ]
                done = await asyncio.gather(*replies, return_exceptions=True)
            finally:
                thaw(nats_server.pid)
            assert all(isinstance(r, nats.errors.TimeoutError) for r in done), done
            await nc.flush(timeout=5)  # what was sent while frozen is answered now
    finally:
        await nc.close()


def test_a_port_is_never_handed_out_twice_before_anything_binds_it():
    """A caller choosing many ports before its servers start (the fault harness: proxies and
    instances) never gets one port twice: a collision came once in about 50 schedules."""
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
