"""Logs for people and for machines: `auto` picks text on a terminal and JSON otherwise, and a
JSON line never carries ANSI codes or uvicorn's `color_message`."""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys

from app.logs import JsonFormatter, resolve_format


def test_a_json_line_has_no_ansi_codes_and_no_color_message():
    record = logging.makeLogRecord(
        {
            "name": "uvicorn.error",
            "levelname": "INFO",
            "msg": "Started server process [%d]",
            "args": (42,),
            "color_message": "Started server process [\x1b[36m%d\x1b[0m]",
        }
    )
    line = JsonFormatter().format(record)
    assert "\x1b" not in line
    entry = json.loads(line)
    assert "color_message" not in entry
    assert entry["msg"] == "Started server process [42]"


def test_auto_is_json_without_a_terminal_and_text_on_one():
    script = "from app.logs import resolve_format; print(resolve_format('auto'))"
    piped = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert piped.stdout.strip() == "json"  # stderr is a pipe here
    leader, follower = pty.openpty()
    try:
        on_tty = subprocess.run(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            check=True,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert on_tty.stdout.strip() == "text"
    assert resolve_format("json") == "json"
    assert resolve_format("text") == "text"


def test_the_server_version_is_a_version(service_process, nats_server):
    """The discovery start-up line names nats-server's version as `2.15.1`, not its repr."""
    service = service_process({"APP_NATS_URL": nats_server.url, "APP_DOMAIN": ""})
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    (started,) = [e for e in lines if "crash detection by" in e["msg"]]
    assert "<nats server" not in started["msg"]
    version = started["msg"].rsplit("(nats-server ", 1)[1].rstrip(")")
    assert [part.isdigit() for part in version.split(".")] == [True, True, True], version
