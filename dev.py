"""Project tasks that need nothing but Python 3.11+ and pip.

python3 dev.py run     set up .venv and run the service on an embedded nats-server
                       --instances N: N instances sharing the embedded servers, on ports from
                       APP_PORT, their output interleaved; Ctrl-C stops them all
                       --port N: the (first) port, as APP_PORT=N; any other option goes to
                       `python -m app` (python -m app --help lists them)
python3 dev.py test    set up .venv and run every test and check (ruff, mypy, pytest)
                       --repeat N: the tests N times, each in a new random order, stopping at the
                       first failure with its seed and order (for hunting flaky tests)
                       --long: the long scenarios too (marked `long`; CI leaves them out)
python3 dev.py bench   set up .venv and run the benchmarks (--quick, --json), docs/benchmarks.md
python3 dev.py chaos   set up .venv and run fault schedules against real processes
                       [--seeds N | --seed S] [--minutes M] [--transport jetstream|redis]
                       [--cluster] [--payment-timeout S]; docs/reliability.md
                       --leases [SECONDS] [--seed S]: lease holders killed and paused at
                       random (60 s by default; CI runs 15 s); docs/coordination.md
python3 dev.py cancels [N]
                       set up .venv and run the outbox's cancel races N times each (20 by
                       default; CI runs 3): a cancel that says True is never delivered
python3 dev.py screenshots
                       set up .venv and save the console's screenshots (1280 and 390 px wide)
                       into docs/console/, from its browser tests; docs/console.md
python3 dev.py lock    resolve the dependencies afresh and pin them in constraints.txt

examples:
  python3 dev.py run --instances 3 --port 9000
  python3 dev.py test tests/api -x
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BENCH_VENV = ROOT / ".venv-bench"  # the peer (FastStream) stays out of .venv and the tests
CONSTRAINTS = ROOT / "constraints.txt"


def bin_dir(env: Path) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin")


BIN = bin_dir(VENV)
PYTHON = BIN / "python"


def ensure_venv(extra: str, env: Path = VENV) -> None:
    """Create `env` and install the project with `extra` at the versions constraints.txt pins,
    again only when pyproject.toml or constraints.txt changes."""
    python = bin_dir(env) / "python"
    if not python.exists():
        print(f"creating {env}", flush=True)
        venv.create(env, with_pip=True)
    digest = hashlib.sha256()
    for name in ("pyproject.toml", CONSTRAINTS.name):
        digest.update((ROOT / name).read_bytes())
    stamp = env / f".installed-{extra}"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return
    print(f"installing qosmesh[{extra}] into {env}", flush=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "--constraint", str(CONSTRAINTS), "-e", f"{ROOT}[{extra}]"], check=True)
    stamp.write_text(digest.hexdigest())


def lock() -> int:
    """Resolve the `bench` extra (`dev` and the benchmark's peer) afresh, within
    pyproject.toml's bounds, in a throwaway venv, and pin what it installed in constraints.txt."""
    with tempfile.TemporaryDirectory(prefix="qosmesh-lock-") as scratch:
        python = Path(scratch) / "bin" / "python"
        venv.create(scratch, with_pip=True)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--quiet", f"{ROOT}[bench]"], check=True)
        frozen = subprocess.run(
            [*pip, "freeze", "--exclude", "qosmesh"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    header = [line for line in CONSTRAINTS.read_text().splitlines(True) if line.startswith("#")]
    CONSTRAINTS.write_text("".join(header) + frozen)
    print(f"{CONSTRAINTS.name}: {len(frozen.splitlines())} pins")
    return 0


def pytest_command(seed: int, pytest_args: list[str]) -> list[str]:
    """pytest over every test but the long scenarios (`--long`: those too) on two workers, in
    the random order `seed` gives; the 25 slowest are named at the end (CI has a 20-minute
    budget to keep). Three workers on two cores were faster but broke timing bounds of fault
    tests (a mutual-TLS handshake, cancels racing a relay, fault schedules)."""
    long = "--long" in pytest_args
    pytest_args = [arg for arg in pytest_args if arg != "--long"]
    return [
        str(PYTHON),
        "-m",
        "pytest",
        *([] if long else ["-m", "not long"]),
        "-n",
        "2",
        "--dist",
        "loadgroup",
        f"--randomly-seed={seed}",
        "--durations=25",
        *pytest_args,
    ]


def run_checks(pytest_args: list[str], repeat: int = 1) -> int:
    steps = [
        [str(BIN / "ruff"), "format", "--check", "."],
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "mypy")],
    ]
    for step in steps:
        code = run(step)
        if code != 0:
            return code
    for n in range(1, repeat + 1):
        seed = random.randrange(2**32)  # noqa: S311 - a test order, not a secret
        if repeat > 1:
            print(f"run {n} of {repeat}, seed {seed}", flush=True)
        started = time.monotonic()
        code = run(pytest_command(seed, pytest_args))
        if repeat > 1:
            print(f"run {n} of {repeat}: exit {code} in {time.monotonic() - started:.0f} s")
        if code != 0:
            if repeat > 1:
                report_failure(n, seed, pytest_args)
            return code
    return 0


def run(step: list[str]) -> int:
    print("+", " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step)))
    return subprocess.run(step, cwd=ROOT).returncode


def report_failure(n: int, seed: int, pytest_args: list[str]) -> None:
    """Say how to run the failed order again, and write that order down."""
    order = ROOT / f".pytest-order-{seed}.txt"
    collect = [str(PYTHON), "-m", "pytest", f"--randomly-seed={seed}"]
    listing = subprocess.run(
        [*collect, "--collect-only", "-q", *pytest_args], cwd=ROOT, capture_output=True, text=True
    )
    order.write_text(listing.stdout)
    print(f"run {n} failed with seed {seed}; its test order is in {order.name}")
    print(f"again: python3 dev.py test --randomly-seed={seed}")


def split_repeat(argv: list[str]) -> tuple[int, list[str]]:
    """Take `--repeat N` out of the pytest arguments."""
    if "--repeat" not in argv:
        return 1, argv
    at = argv.index("--repeat")
    return int(argv[at + 1]), argv[:at] + argv[at + 2 :]


def lease_chaos(args: list[str]) -> int:
    """The lease test's random kills and pauses, run longer than in CI."""
    ensure_venv("dev")
    at = args.index("--leases")
    seconds = args[at + 1] if at + 1 < len(args) and args[at + 1].isdigit() else "60"
    env = {**os.environ, "QOSMESH_LEASE_CHAOS_SECONDS": seconds}
    if "--seed" in args:
        env["QOSMESH_LEASE_CHAOS_SEED"] = args[args.index("--seed") + 1]
    test = "tests/coordination/test_leases.py::" + LEASE_CHAOS_TEST
    argv = [str(PYTHON), "-m", "pytest", "-q", "-s", "-p", "no:randomly", test]
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


LEASE_CHAOS_TEST = "test_random_kills_and_pauses_never_let_a_stale_write_in_or_two_holders_overlap"


def cancel_races(args: list[str]) -> int:
    """The outbox's cancel races (a relay killed between publish and commit, a lost PubAck),
    each run N times (20 by default; CI runs 3)."""
    if not (ROOT / "tests" / "database").is_dir():
        print("dev.py cancels races the outbox, and this service was made without a database")
        return 2
    ensure_venv("dev")
    runs = args[0] if args and args[0].isdigit() else "20"
    env = {**os.environ, "QOSMESH_CANCEL_RUNS": runs}
    test = "tests/database/test_outbox_faults.py"
    argv = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:randomly", test, "-k", "cancel_after"]
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


def run_service(args: list[str]) -> int:
    """`python -m app` with `args`, `--port N` taken out of them as APP_PORT=N."""
    env = dict(os.environ)
    rest = []
    words = iter(args)
    for word in words:
        name, equals, value = word.partition("=")
        if name != "--port":
            rest.append(word)
            continue
        port = value if equals else next(words, "")
        if not port.isdigit():
            print("dev.py run --port: a port number, e.g. python3 dev.py run --port 9000")
            return 2
        env["APP_PORT"] = port
    ensure_venv("embedded")
    os.execve(PYTHON, [str(PYTHON), "-m", "app", *rest], env)  # noqa: S606


HELP = ("help", "-h", "--help")


def main(argv: list[str]) -> int:
    task = argv[0] if argv else "help"
    if task == "run":
        return run_service(argv[1:])
    if task == "test":
        ensure_venv("dev")
        repeat, pytest_args = split_repeat(argv[1:])
        return run_checks(pytest_args, repeat)
    if task == "lock":
        return lock()
    if task == "cancels":
        return cancel_races(argv[1:])
    if task == "chaos" and "--leases" in argv:
        return lease_chaos(argv[1:])
    if task == "chaos" and not (ROOT / "app" / "chaos").is_dir():
        print("dev.py chaos drives the example domain, and this service was made without it")
        return 2
    if task == "bench":
        ensure_venv("bench", BENCH_VENV)
        python = bin_dir(BENCH_VENV) / "python"
        return subprocess.run([str(python), "-m", "bench", *argv[1:]], cwd=ROOT).returncode
    if task == "screenshots":
        ensure_venv("dev")
        env = {**os.environ, "QOSMESH_SCREENSHOTS": str(ROOT / "docs" / "console")}
        argv = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:randomly", "tests/console"]
        return subprocess.run(argv, cwd=ROOT, env=env).returncode
    if task == "chaos":
        ensure_venv("dev")
        return subprocess.run([str(PYTHON), "-m", "app.chaos", *argv[1:]], cwd=ROOT).returncode
    if task not in HELP:
        print(f"dev.py: no task {task!r}; the tasks:\n")
    print(__doc__)
    return 0 if task in HELP else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
