"""`python -m app --instances N` off a terminal: every line of every instance comes through as
JSON with its prefix (no colour codes; the banner as one `ready` log line); SIGTERM stops them
all and the servers; a second run finds the broker's data of the first."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.foundation.test_quickstart import ROOT, alive, consecutive_ports


def run_instances(data: Path, base: int, seconds_after_ready: float = 0.5) -> list[str]:
    """Two instances until both said they are ready, then SIGTERM; every line they printed."""
    env = {
        **os.environ,
        "APP_DATA_DIR": str(data),
        "APP_PORT": str(base),
        "APP_DOMAIN": "",
        "APP_LOG_LEVEL": "INFO",
    }
    env.pop("APP_LOG_FORMAT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--instances", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    started = 0
    give_up = time.monotonic() + 60
    while started < 2:
        line = proc.stdout.readline()
        assert line, f"it ended:\n{''.join(lines)}"
        assert time.monotonic() < give_up, "not ready in time"
        lines.append(line)
        started += '"msg": "ready: ' in line  # each says so in one line, after it started
    time.sleep(seconds_after_ready)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    lines += rest.splitlines(keepends=True)
    assert proc.returncode == 0, "".join(lines)[-3000:]
    return lines


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_off_a_terminal_the_lines_are_prefixed_json_and_a_second_run_keeps_the_data(tmp_path):
    data = tmp_path / "data"
    base = consecutive_ports(2)
    first = run_instances(data, base)
    pids = [int((data / "instances" / f"i{i}" / "pid").read_text()) for i in range(2)]
    assert not [pid for pid in pids if alive(pid)], "an instance outlived SIGTERM"
    assert not (data / "nats" / "running.url").exists(), "the broker outlived SIGTERM"
    for line in first:
        assert "\x1b[" not in line, line
        if line.startswith("[instances] "):
            continue
        tag, _, text = line.partition(" ")
        assert tag in ("[i0]", "[i1]"), line
        entry = json.loads(text)
        assert "color_message" not in entry
    ready = [json.loads(line.partition(" ")[2]) for line in first if '"msg": "ready: ' in line]
    assert len(ready) == 2, "each instance says it is ready, in one log line"
    assert all("/console" in entry["msg"] and "/metrics" in entry["msg"] for entry in ready)
    created = [line for line in first if "created discovery bucket" in line]
    assert created  # both may race to create it: creating is idempotent

    second = run_instances(data, base)
    assert not [line for line in second if "created discovery bucket" in line]
