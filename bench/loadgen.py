"""HTTP load for the benchmark's HTTP rows: `wrk` when it is installed, else this module's own
generator, run in a process of its own either way so that it never shares a core's time with
the bench's event loop.

`python -m bench.loadgen URL SECONDS CONNECTIONS BODY` is the in-repo generator: CONNECTIONS
keep-alive HTTP/1.1 connections, each sending `POST` with BODY (JSON) as soon as the previous
answer is in, for SECONDS; it prints one JSON line with the count, the rate and the latency
percentiles. wrk does the same with less CPU (`apt-get install wrk`, `brew install wrk`).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import uvloop


@dataclass(slots=True, frozen=True)
class Load:
    rate: float  # answers per second
    p50: float  # seconds
    p99: float
    requests: int
    errors: int  # answers other than 2xx, and broken connections


def generator() -> str:
    return "wrk" if shutil.which("wrk") else "bench.loadgen"


def run(url: str, seconds: float, connections: int, body: str) -> Load:
    """POST `body` to `url` from `connections` connections for `seconds`."""
    if shutil.which("wrk"):
        return _wrk(url, seconds, connections, body)
    command = [sys.executable, "-m", "bench.loadgen", url, str(seconds), str(connections), body]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return Load(**json.loads(out.strip().splitlines()[-1]))


# -- wrk ----------------------------------------------------------------------------------------

_SCRIPT = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk(url: str, seconds: float, connections: int, body: str) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_SCRIPT.format(body=json.dumps(body)))
    try:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
        out = subprocess.run(
            [*command, "-s", script.name, url], capture_output=True, text=True, check=True
        ).stdout
    finally:
        Path(script.name).unlink()
    return parse_wrk(out)


def parse_wrk(out: str) -> Load:
    def latency(percent: str) -> float:
        found = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"wrk printed no {percent}% latency:\n{out}")
        return float(found[1]) * _UNITS[found[2]]

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", out, re.MULTILINE)
    if rate is None or total is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    broken = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad[1]) if bad else 0
    if broken:
        errors += sum(int(n) for n in broken.groups())
    return Load(float(rate[1]), latency("50"), latency("99"), int(total[1]), errors)


# -- the in-repo generator ----------------------------------------------------------------------


async def _connection(
    host: str, port: int, request: bytes, until: float, latencies: list[float]
) -> int:
    """Send `request` again and again until `until`; return how many answers were not 2xx."""
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(length[1]) if length else 0)
            latencies.append(time.perf_counter() - started)
            if head[9:10] != b"2":
                errors += 1
    finally:
        writer.close()
    return errors


async def _load(url: str, seconds: float, connections: int, body: str) -> Load:
    parts = urlsplit(url)
    data = body.encode()
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    latencies: list[float] = []
    started = time.perf_counter()
    until = started + seconds
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    results = await asyncio.gather(
        *(_connection(host, port, request, until, latencies) for _ in range(connections)),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    errors = sum(r if isinstance(r, int) else 1 for r in results)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Load(len(latencies) / elapsed, q[49], q[98], len(latencies), errors)


def main(argv: list[str]) -> int:
    url, seconds, connections, body = argv[0], float(argv[1]), int(argv[2]), argv[3]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        load = runner.run(_load(url, seconds, connections, body))
    print(json.dumps(asdict(load)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
