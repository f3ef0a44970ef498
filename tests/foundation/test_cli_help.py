"""The command line as a newcomer meets it: every command and subcommand of `python -m app`
says what it does, with an example, and so does `dev.py --help`; `dev.py run --port N` runs
the service on port N."""

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from app.cli.commands import build_parser, main
from app.testing import eventually
from tests.foundation.test_quickstart import ROOT, consecutive_ports


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the command line, with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


EVERY_COMMAND = dict(commands(build_parser()))


@pytest.mark.parametrize("path", EVERY_COMMAND, ids=lambda path: " ".join(path) or "(none)")
def test_every_command_says_what_it_does_with_an_example(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps options to the terminal's width
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "example" in shown
    parser = EVERY_COMMAND[path]
    assert parser.description, path
    assert parser.description in shown  # as written, not rewrapped
    unexplained = [action.dest for action in parser._actions if not action.help]
    assert unexplained == []
    assert max(len(line) for line in shown.splitlines()) <= 80, "fits a terminal"


def test_the_top_level_help_lists_the_commands_with_examples():
    shown = subprocess.run(
        [sys.executable, "-m", "app", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for name in ("serve", "dlq", "nodes", "publish", "nats-permissions"):
        assert f"\n    {name} " in shown or f"\n    {name}\n" in shown, name
    assert "examples:\n  python -m app " in shown


def test_dlq_delete_is_discard_under_its_former_name_and_is_not_listed(capsys):
    """The console says discard; scripts written with delete still run."""
    dlq = EVERY_COMMAND[("dlq",)]
    assert dlq.parse_args(["delete", "js-1"]).dlq_ids == ["js-1"]
    with pytest.raises(SystemExit):
        main(["dlq", "--help"])
    shown = capsys.readouterr().out
    assert "discard" in shown
    assert "delete" not in shown


def dev(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "dev.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("word", ["--help", "-h", "help"])
def test_dev_py_help_lists_the_tasks_and_exits_0(word):
    shown = dev(word)
    assert shown.returncode == 0, shown.stderr
    assert "python3 dev.py run" in shown.stdout
    assert "example" in shown.stdout


def test_dev_py_says_an_unknown_task_and_lists_the_tasks():
    shown = dev("tset")
    assert shown.returncode == 2
    assert shown.stdout.startswith("dev.py: no task 'tset'")
    assert "python3 dev.py test" in shown.stdout


def test_dev_py_run_refuses_a_port_that_is_not_a_number():
    shown = dev("run", "--port", "http")
    assert shown.returncode == 2
    assert shown.stdout == "dev.py run --port: a port number, e.g. python3 dev.py run --port 9000\n"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_dev_py_run_takes_the_port_and_passes_the_rest_to_the_service(tmp_path):
    """`--port` wins over APP_PORT; `--instances` goes through to `python -m app`."""
    base = consecutive_ports(2)
    env = {
        **os.environ,
        "APP_DATA_DIR": str(tmp_path / "data"),
        "APP_PORT": "1",  # cannot be bound: the run works only on --port's
        "APP_DOMAIN": "",
    }
    proc = subprocess.Popen(  # dev.py run becomes the service: the same process
        [sys.executable, "dev.py", "run", "--instances", "2", "--port", str(base)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=2) as client:

            async def ready(port: int) -> bool:
                try:
                    return (await client.get(f"http://127.0.0.1:{port}/readyz")).is_success
                except httpx.HTTPError:
                    return False

            for port in (base, base + 1):
                await eventually(lambda port=port: ready(port), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
