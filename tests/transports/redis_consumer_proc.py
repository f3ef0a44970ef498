"""A consumer process for crash tests: handles Ping on Redis Streams and appends each handled
number to a file, one line per delivery, before the ack.

    python -m tests.transports.redis_consumer_proc NATS_URL REDIS_URL OUT_FILE DATA_DIR
"""

import asyncio
import os
import sys

from app.settings import Settings
from tests.transports.conftest import Ping, running_bus


async def main(nats_url: str, redis_url: str, out: str, data_dir: str) -> None:
    settings = Settings.model_validate(
        {
            "nats_url": nats_url,
            "redis_url": redis_url,
            "qos1_transport": "redis",
            "qos2_transport": "redis",
            "service_name": "svc",
            "redis_claim_idle": 1.0,
            "redis_block_ms": 200,
            "max_deliver": 20,
            "consumer_concurrency": 8,
            "data_dir": data_dir,
        }
    )
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def handle(message: Ping) -> None:
        await asyncio.sleep(0.01)
        os.write(fd, f"{message.n}\n".encode())

    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
