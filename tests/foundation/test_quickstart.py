"""The README's quickstart, run from the README's own text so that it cannot drift: the first
block (`dev.py run --instances 3`) on a terminal of its own, the others as a script beside it,
the order and payment block twice (a reader runs it again, against the kept `.data`). Only the
ports (8000-8002) and the data dir (`.data`) are changed, to free ones."""

import json
import os
import pty
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.brokers.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def quickstart() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def consecutive_ports(count: int) -> int:
    while True:
        base = free_port()
        if base + count < 65536 and all(_free(base + i) for i in range(count)):
            return base


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def localised(text: str, base: int, data: Path) -> str:
    for index in (2, 1, 0):
        text = text.replace(f"800{index}", str(base + index))
    return text.replace(".data/", f"{data}/")


class Terminal:
    """A command on a terminal of its own; everything it prints, kept."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.fd, child = pty.openpty()
        self.proc = subprocess.Popen(
            ["bash", "-c", command],  # noqa: S607 (the shell a reader would use)
            cwd=ROOT,
            env=env,
            stdout=child,
            stderr=child,
        )
        os.close(child)
        self.output = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += ANSI.sub("", chunk.decode(errors="replace")).replace("\r", "")

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> None:
        give_up = time.monotonic() + timeout
        while len(re.findall(pattern, self.output)) < count:
            assert self.proc.poll() is None, f"it exited:\n{self.output[-3000:]}"
            assert time.monotonic() < give_up, f"no {pattern!r}:\n{self.output[-3000:]}"
            time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_readme_quickstart_runs_as_written(tmp_path):
    start, pay, *rest = quickstart()
    steps = "\n".join([pay, pay, *rest])
    base = consecutive_ports(3)
    data = tmp_path / "data"
    env = {**os.environ, "APP_PORT": str(base), "APP_DATA_DIR": str(data)}
    env.pop("APP_LOG_FORMAT", None)
    first = Terminal(localised(start, base, data).strip(), env)
    try:
        first.wait_for(r"\[i\d\] \S+ \S+ ready\n", timeout=90, count=3)
        script = subprocess.run(
            ["bash", "-c", "set -eu\n" + localised(steps, base, data)],  # noqa: S607
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        second = script.stdout + script.stderr
        assert script.returncode == 0, second
        pids = [int((data / "instances" / f"i{i}" / "pid").read_text()) for i in range(3)]
        first.wait_for(r"\[instances\] i2 exited with signal SIGKILL", timeout=5)
        first.wait_for(r"\[i[01]\] .*node left: ", timeout=15)
        # The token the first block sets opens the console's Dead letters tab (its API).
        token = re.search(r"APP_ADMIN_TOKEN=(\S+)", start)
        assert token is not None, "the quickstart sets an admin token"
        bearer = {"Authorization": f"Bearer {token.group(1)}"}
        dlq = httpx.get(f"http://127.0.0.1:{base}/admin/dlq", headers=bearer, timeout=10)
        assert dlq.status_code == 200, dlq.text
    finally:
        first.proc.send_signal(signal.SIGINT)
        code = first.proc.wait(timeout=60)
    print(f"\n--- first terminal ---\n{first.output}\n--- second terminal ---\n{second}")

    assert re.search(r"^3 instances$", second, re.M)
    assert re.search(rf"left +\S+ \S+ \S+:{base + 2} \(expired", second)
    if (ROOT / "app" / "example").is_dir():
        replies = [line for line in second.splitlines() if '"payment_id":"pay-' in line]
        assert len(replies) == 4, second
        for first_reply, again in (replies[:2], replies[2:]):
            assert json.loads(first_reply) == json.loads(again), "the same key answered alike"
        assert json.loads(replies[0]) != json.loads(replies[2]), "a new order, a new key"
        paid = re.findall(r'"status":"confirmed","paid":500', second)
        assert len(paid) == 2, "paid once, each time the block ran"
        assert re.search(r"stored in \w+_ORDER_PLACED", second)
        assert "not json" in second  # the dead letter, shown
    for index in range(3):
        banner = first.output.split(f"[i{index}] ")[1:]
        assert any("console" in line and f":{base + index}/console" in line for line in banner)
    assert code == 0, first.output[-2000:]
    assert not [pid for pid in pids if alive(pid)], "an instance outlived Ctrl-C"
    assert not (data / "nats" / "running.url").exists(), "the broker outlived Ctrl-C"
