"""A consumer process for crash tests: handles Ping with the given settings and appends each
handled number to a file, one line per delivery, before the ack.

    python -m tests.transports.consumer_proc SETTINGS_JSON OUT_FILE
"""

import asyncio
import json
import os
import sys

from app.settings import Settings
from tests.transports.conftest import Ping, running_bus


async def main(settings_json: str, out: str) -> None:
    values = json.loads(settings_json)
    pause = float(values.pop("handler_seconds", 0.005))
    settings = Settings.model_validate({"max_deliver": 20, "consumer_concurrency": 8, **values})
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def handle(message: Ping) -> None:
        await asyncio.sleep(pause)
        os.write(fd, f"{message.n}\n".encode())

    async with running_bus(settings, lambda bus: bus.subscribe(Ping, handle)):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
