"""A port in use fails the start first: one line naming APP_PORT and --instances, before any
embedded server, discovery or lease is touched (a second `dev.py run` used to start its own
NATS and PostgreSQL, join discovery and take a lease before uvicorn's `address already in
use`)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.brokers.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("instances", [1, 2])
def test_a_port_in_use_stops_the_start_at_once_with_one_line(tmp_path, instances):
    base = free_port()
    taken = base + instances - 1  # the last of the instances' ports
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        data = tmp_path / "data"
        env = {**os.environ, "APP_PORT": str(base), "APP_DATA_DIR": str(data)}
        done = subprocess.run(
            [sys.executable, "-m", "app", "--instances", str(instances)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"APP_PORT={taken}" in lines[0]
    assert "--instances" in lines[0]
    assert not (data / "nats").exists(), "an embedded server was started first"
