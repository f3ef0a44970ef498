"""Generated projects pass their own checks offline: installed with no deps and no index into a
venv that sees the test environment's packages, then ruff, mypy and the fast tests run there."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.brokers.embedded import free_port
from tests.scaffold.conftest import Render

pytestmark = pytest.mark.slow

DEV_BIN = Path(sys.executable).parent
LINKED_TOOLS = ("hadolint", "nats-server")
"""Binaries tests look up beside their interpreter (sysconfig scripts)."""


@pytest.fixture
def nested_tmp() -> Iterator[Path]:
    """The generated project's own TMPDIR. A pytest session makes `$TMPDIR/pytest-of-<user>`
    private (0700) as it starts; sharing /tmp with this session's would close the path this
    session's embedded PostgreSQL (run as another user when root) starts through."""
    path = Path(tempfile.mkdtemp(prefix="qm-nested-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def project_venv(project: Path, where: Path, tmp: Path) -> tuple[Path, dict[str, str]]:
    """A venv holding the generated project (not editable: hatchling's editable build wants
    the `editables` package, which the dev extra does not install)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where)],
        check=True,
        timeout=60,
    )
    python = where / "bin" / "python"
    for tool in LINKED_TOOLS:
        if (DEV_BIN / tool).exists():
            (where / "bin" / tool).symlink_to(DEV_BIN / tool)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    test_env = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site) / "test-environment.pth").write_text("\n".join(sorted(test_env)) + "\n")
    env = {
        "PATH": f"{where / 'bin'}:{DEV_BIN}:/usr/bin:/bin",
        "HOME": str(where),
        "TMPDIR": str(tmp),
    }
    install = subprocess.run(
        [
            *(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-index", "--no-build-isolation", str(project)),
        ],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python, env


def check(project: Path, env: dict[str, str], argv: list[str], timeout: float) -> str:
    result = subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} failed in {project}:\n{output[-6000:]}"
    return output


ALL = os.environ.get("QOSMESH_GENERATED_TESTS") == "all"
"""Run every fast test of a generated project (`QOSMESH_GENERATED_TESTS=all python3 dev.py test
tests/scaffold`); by default a bounded set, where the generation's renames and cuts land (the
rest are the live tests modulo the renames, already run by this suite, and ruff and mypy check
every generated file): CI stays within its time."""


def fast_tests(python: Path, project: Path, env: dict[str, str], bounded: list[str]) -> str:
    """Runs the project's tests not marked slow (in CI: those under `bounded`); returns their
    summary line."""
    argv = [
        str(python),
        "-m",
        "pytest",
        "-m",
        "not slow",
        "-q",
        "-n",
        "2",
        "-p",
        "no:cacheprovider",
        *([] if ALL else bounded),
    ]
    output = check(project, env, argv, timeout=300)
    return str(re.findall(r"^=*\s*(\d+ passed.*)$", output, re.M)[-1])


@pytest.mark.timeout(400)
def test_default_render_passes_ruff_mypy_and_its_fast_tests(render: Render, tmp_path, nested_tmp):
    project = render()
    python, env = project_venv(project, tmp_path / "venv", nested_tmp)
    check(project, env, [str(DEV_BIN / "ruff"), "format", "--check", "--no-cache", "."], 60)
    check(project, env, [str(DEV_BIN / "ruff"), "check", "--no-cache", "."], 60)
    mypy = [str(python), "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")]
    check(project, env, mypy, 180)
    summary = fast_tests(
        python, project, env, ["tests/foundation", "tests/example", "tests/deploy"]
    )
    print(f"my-service: {summary}")
    assert " passed" in summary
    assert "failed" not in summary
    assert "error" not in summary


@pytest.mark.timeout(400)
def test_without_database_on_redis_starts_registers_and_passes_its_checks_and_fast_tests(
    render: Render, tmp_path, nested_tmp
):
    """No database (so no example) and Redis as the QoS 1 default, on a bare machine: the run
    command's embedded Valkey, and no PostgreSQL."""
    project = render(database="none", qos1_transport="redis", slug="billing")
    python, env = project_venv(project, tmp_path / "venv", nested_tmp)
    check(project, env, [str(DEV_BIN / "ruff"), "format", "--check", "--no-cache", "."], 60)
    check(project, env, [str(DEV_BIN / "ruff"), "check", "--no-cache", "."], 60)
    mypy = [str(python), "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")]
    check(project, env, mypy, 180)
    port = free_port()
    run_env = {
        **env,
        "APP_PORT": str(port),
        "APP_DATA_DIR": str(tmp_path / "data"),
        "APP_LOG_FORMAT": "text",
    }
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "app"],
            cwd=tmp_path,
            env=run_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(url + "/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready is not None, log_path.read_text()
        assert ready.status_code == 200, log_path.read_text()
        nodes = httpx.get(url + "/nodes", timeout=2).json()
        mine = [n for n in nodes["nodes"] if n["node_id"] == nodes["self"]]
        assert [n["service"] for n in mine] == ["billing"]
        assert httpx.post(url + "/orders", json={"sku": "a"}, timeout=2).status_code == 404
        assert set(ready.json()["checks"]) == {"nats", "redis", "discovery"}
        assert not [p for p in psutil.Process(proc.pid).children(True) if p.name() == "postgres"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) is not None
    summary = fast_tests(python, project, env, ["tests/foundation", "tests/deploy", "tests/api"])
    print(f"billing without a database, QoS 1 on Redis: {summary}")
    assert " passed" in summary
    assert "failed" not in summary
