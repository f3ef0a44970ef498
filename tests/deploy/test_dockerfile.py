"""The production Dockerfile: lint-clean, built the way the issue asks, and its install and
start steps replayed offline (no container engine runs here)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from app.brokers.embedded import NatsServer, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined; only `stage` when given."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: list[tuple[str, str]] = []
    current: str | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else None
        if stage is None or current == stage or (keyword == "FROM" and current == stage):
            result.append((keyword, rest.strip()))
    return result


def image_env() -> dict[str, str]:
    """The ENV of the runtime stage, as the image would set it."""
    env: dict[str, str] = {}
    for keyword, rest in instructions("runtime"):
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def exec_form(keyword: str) -> list[str]:
    values = [json.loads(rest) for kw, rest in instructions("runtime") if kw == keyword]
    assert len(values) == 1, f"one exec-form {keyword} expected"
    return list(values[0])


def test_hadolint_finds_nothing():
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_base_image_is_a_pinned_slim_python():
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1))
    froms = [rest for kw, rest in instructions() if kw == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_dependencies_are_installed_in_a_layer_before_the_source():
    steps = instructions("build")
    copy_index = [i for i, (kw, rest) in enumerate(steps) if kw == "COPY"]
    deps = next(i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and "--requirement" in rest)
    source = next(i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and "app" in rest)
    assert steps[copy_index[0]] == ("COPY", "pyproject.toml constraints.txt ./")
    assert copy_index[0] < deps < source
    assert "--constraint constraints.txt" in steps[deps][1], "the image installs the pins"
    installs = [rest for kw, rest in steps if kw == "RUN" and "pip install" in rest]
    assert any("--no-deps ." in rest for rest in installs)
    assert not any("embedded" in rest for rest in installs), "the image uses an external NATS"


def test_runtime_stage_is_non_root_with_no_build_tools_and_the_venv_only():
    steps = instructions("runtime")
    assert ("USER", "10001:10001") in steps
    copies = [rest for kw, rest in steps if kw == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    runs = " ".join(rest for kw, rest in steps if kw == "RUN")
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in runs


def test_entrypoint_is_exec_form_so_sigterm_reaches_python():
    assert exec_form("ENTRYPOINT") == ["python", "-m", "app"]
    assert exec_form("CMD") == ["serve"]
    env = image_env()
    assert env["APP_HOST"] == "0.0.0.0"
    assert env["APP_DATA_DIR"] == "/var/lib/qosmesh"
    assert "APP_NATS_URL" not in env, "the NATS URL is deployment configuration"
    healthcheck = next(rest for kw, rest in instructions("runtime") if kw == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "curl" not in healthcheck
    assert "wget" not in healthcheck


def test_dockerignore_sends_only_what_the_build_copies():
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!constraints.txt", "!README.md", "!app/"} <= set(lines)


def healthcheck_argv() -> list[str]:
    rest = next(rest for kw, rest in instructions("runtime") if kw == "HEALTHCHECK")
    return list(json.loads(rest[rest.index("CMD") + 3 :].strip()))


@pytest.mark.slow
def test_image_install_and_entrypoint_serve_and_stop_offline(tmp_path, nats_server: NatsServer):
    """Replays the image: the project installed with no deps and no index into a fresh venv
    (dependencies from the test environment), then the ENTRYPOINT with the image's ENV
    against an external NATS, from a directory outside the repository."""
    venv = tmp_path / "image-venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=60,
    )
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # --system-site-packages reaches the base interpreter's packages, not those of the venv
    # the tests run in: point at those explicitly, as the image's dependency layer would be.
    test_env = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "test-environment.pth").write_text("\n".join(sorted(test_env)) + "\n")

    workdir = tmp_path / "work"
    workdir.mkdir()
    clean_env = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    install = subprocess.run(
        [
            *(str(python), "-m", "pip", "install"),
            *("--no-deps", "--no-index", "--no-build-isolation"),
            *("--quiet", "--disable-pip-version-check", str(ROOT)),
        ],
        cwd=workdir,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.run(
        [str(python), "-c", "import app; print(app.__file__)"],
        cwd=workdir,
        env=clean_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"app imported from {where}, not the image's venv"

    port = free_port()
    env = {
        **clean_env,
        **image_env(),
        "PATH": clean_env["PATH"],
        "APP_HOST": "127.0.0.1",
        "APP_PORT": str(port),
        "APP_DATA_DIR": str(tmp_path / "data"),
        "APP_NATS_URL": nats_server.url,
        "APP_DRAIN_TIMEOUT": "5",
    }
    argv = [*exec_form("ENTRYPOINT"), *exec_form("CMD")]
    assert argv[0] == "python"
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(python), *argv[1:]],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        assert httpx.get(base + "/readyz").json()["status"] == "ready"
        probe = subprocess.run(
            [str(python), *healthcheck_argv()[1:]], env=env, cwd=workdir, timeout=10
        )
        assert probe.returncode == 0, "the image's HEALTHCHECK command fails"

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done.
    assert code in (0, -signal.SIGTERM), log
    assert "service stopping" in log
    assert "Traceback" not in log, log
    assert not os.path.exists(ROOT / "build"), "the install wrote into the repository"
