"""Project tasks that need nothing but Python 3.11+ and pip.

python3 dev.py run     set up .venv and run the service on an embedded nats-server
python3 dev.py test    set up .venv and run every test and check (ruff, mypy, pytest)
python3 dev.py bench   set up .venv and run the benchmarks (--quick, --json), docs/benchmarks.md
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def ensure_venv(extra: str) -> None:
    """Create .venv and install the project with `extra`, again only when pyproject changes."""
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / f".installed-{extra}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing qosmesh[{extra}] into {VENV}", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{extra}]"], check=True)
    stamp.write_text(digest)


def run_checks(pytest_args: list[str]) -> int:
    steps = [
        [str(BIN / "ruff"), "format", "--check", "."],
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "mypy")],
        [str(PYTHON), "-m", "pytest", "-n", "2", "--dist", "loadgroup", *pytest_args],
    ]
    for step in steps:
        print("+", " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step)))
        code = subprocess.run(step, cwd=ROOT).returncode
        if code != 0:
            return code
    return 0


def main(argv: list[str]) -> int:
    task = argv[0] if argv else "help"
    if task == "run":
        ensure_venv("embedded")
        os.execv(PYTHON, [str(PYTHON), "-m", "app", *argv[1:]])  # noqa: S606
    if task == "test":
        ensure_venv("dev")
        return run_checks(argv[1:])
    if task == "bench":
        ensure_venv("dev")
        return subprocess.run([str(PYTHON), "-m", "bench", *argv[1:]], cwd=ROOT).returncode
    print(__doc__)
    return 0 if task == "help" else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
