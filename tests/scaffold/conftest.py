"""Render the scaffold with cookiecutter into temp dirs, with a config that keeps it out of ~."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COOKIECUTTER = Path(sys.executable).parent / "cookiecutter"

Render = Callable[..., Path]


@pytest.fixture(scope="session")
def cookiecutter_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("cookiecutter")
    config = home / "config.yaml"
    config.write_text(f"replay_dir: {home / 'replay'}\ncookiecutters_dir: {home / 'templates'}\n")
    return {"COOKIECUTTER_CONFIG": str(config), "PATH": f"{COOKIECUTTER.parent}:/usr/bin:/bin"}


def run_cookiecutter(
    env: dict[str, str], out: Path, answers: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The documented command: cookiecutter --no-input <repo> --directory scaffold -o OUT k=v."""
    extra = [f"{key}={value}" for key, value in answers.items()]
    argv = [str(COOKIECUTTER), "--no-input", str(ROOT), "--directory", "scaffold", "-o", str(out)]
    return subprocess.run(
        [*argv, *extra], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory, cookiecutter_env: dict[str, str]) -> Render:
    """`render(slug="billing", include_helm="no")`: the generated project's directory."""
    cache: dict[tuple[tuple[str, str], ...], Path] = {}

    def make(**answers: str) -> Path:
        key = tuple(sorted(answers.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("render")
            result = run_cookiecutter(cookiecutter_env, out, answers)
            assert result.returncode == 0, result.stdout + result.stderr
            (project,) = [p for p in out.iterdir() if p.is_dir()]
            cache[key] = project
        return cache[key]

    return make
