"""One discovery instance watching a bucket, for the CPU row: `python -m bench.watcher URL
BUCKET SECONDS EXPECT`. Prints the CPU seconds it used over SECONDS, once EXPECT nodes are in
view, as JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from app.brokers import open_brokers
from app.discovery import open_discovery
from app.settings import Settings
from app.transports.registry import needs_redis


async def watch(url: str, bucket: str, seconds: float, expect: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            nats_url=url, service_name="watcher", discovery_bucket=bucket, data_dir=Path(tmp)
        )
        async with (
            open_brokers(settings, redis=needs_redis(settings)) as brokers,
            open_discovery(brokers, settings) as view,
        ):
            deadline = time.monotonic() + 30
            while len(view.nodes()) < expect and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            cpu, wall = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            return {
                "cpu": time.process_time() - cpu,
                "wall": time.monotonic() - wall,
                "nodes": len(view.nodes()),
            }


def main(argv: list[str]) -> int:
    url, bucket, seconds, expect = argv[0], argv[1], float(argv[2]), int(argv[3])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(watch(url, bucket, seconds, expect))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
