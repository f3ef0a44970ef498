"""The real-server fixtures: start, kill and restart keep their stores."""

import nats
import redis.asyncio as aioredis
from nats.js.api import StreamConfig


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
