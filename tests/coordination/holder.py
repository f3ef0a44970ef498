"""`python -m tests.coordination.holder NATS_URL HOLDER HISTORY TTL`: one instance that keeps
trying to hold the lease `job` and, while it does, writes the fenced record `job-output` with
its token. Every step is a JSON line in HISTORY, with wall-clock times, for the tests to check:
`confirmed` (token, start, end: the interval it counts the lease valid), `wrote` (token and the
record's revision),
`refused` (a write with a stale token), `lost` (noticed before doing more work)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import nats

from app.brokers.kv import Bucket
from app.coordination import FencedRecord, Leases, leader
from app.errors import LeaseLostError, StaleTokenError


async def main(url: str, holder: str, history: Path, ttl: float) -> None:
    servers = url.split(",")  # one server, or every node of a cluster
    nc = await nats.connect(servers=servers)
    js = nc.jetstream()
    replicas = min(3, len(servers))
    bucket = await Bucket.open(nc, js, "test_leases", ttl=ttl, replicas=replicas)
    records = await Bucket.open(nc, js, "test_records", ttl=None, replicas=replicas)
    leases = Leases(bucket, holder, ttl)
    lease = leases.lease("job")
    record = FencedRecord(records, "job-output")

    def note(event: str, **fields: object) -> None:
        line = json.dumps({"event": event, "holder": holder, "at": time.time(), **fields})
        with history.open("a") as out:
            out.write(line + "\n")  # one write: the holders append to one file

    def confirmed(token: int, sent: float, until: float) -> None:
        offset = time.time() - time.monotonic()  # wall clock of this process, for comparing
        note("confirmed", token=token, start=sent + offset, end=until + offset)

    lease.on_confirmed = confirmed
    while True:
        try:
            async with leader(lease):
                while True:
                    token = lease.token
                    await asyncio.sleep(0.05)  # a pause here holds a token it may no longer own
                    try:
                        revision = await record.write(token, holder)
                        note("wrote", token=token, revision=revision)
                    except StaleTokenError:
                        note("refused", token=token)
                    await asyncio.sleep(0.05)
        except LeaseLostError:
            note("lost")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])))
