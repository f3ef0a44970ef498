"""Settings: the README table is the contract, and bad values stop the start clearly."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings, describe_validation_error

ROOT = Path(__file__).resolve().parents[2]


def readme_table() -> dict[str, str]:
    rows = re.findall(r"^\| (APP_[A-Z0-9_]+) \| ([^|]*) \|", (ROOT / "README.md").read_text(), re.M)
    return {name: default.strip().strip("`") for name, default in rows}


def test_readme_lists_every_setting_with_its_default():
    table = readme_table()
    fields = Settings.model_fields
    assert set(table) == {f"APP_{name.upper()}" for name in fields}
    for name, field in fields.items():
        cell = table[f"APP_{name.upper()}"]
        default = field.get_default(call_default_factory=True)
        if default is None:
            assert cell.startswith("unset"), name
        elif isinstance(default, dict):
            assert json.loads(cell) == default, name
        else:
            assert type(default)(cell) == default, name


def start_line(tmp_path: Path, env: dict[str, str]) -> tuple[str, str]:
    """`python -m app` with `env`, which must stop it: its one stderr line, and all of stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        env={**env, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    return lines[0], result.stderr


def test_bad_value_prints_one_line_naming_the_variable(tmp_path):
    line, _ = start_line(tmp_path, {"APP_PORT": "abc"})
    assert line.startswith("configuration error: APP_PORT:")


def test_a_short_admin_token_stops_the_start_naming_the_variable(tmp_path):
    line, stderr = start_line(tmp_path, {"APP_ADMIN_TOKEN": "short-token"})
    assert line.startswith("configuration error: APP_ADMIN_TOKEN:")
    assert "16 characters" in line
    assert "short-token" not in stderr


@pytest.mark.parametrize("blank", ["", " ", "\t \n"])
def test_a_blank_admin_token_means_admin_off(blank):
    assert Settings.model_validate({"admin_token": blank}).admin_token is None


def test_secret_values_are_not_echoed_in_errors():
    with pytest.raises(ValidationError) as info:
        Settings.model_validate({"admin_token": 12345678.5})
    text = describe_validation_error(info.value)
    assert "APP_ADMIN_TOKEN" in text
    assert "12345678" not in text


def test_nats_url_list_is_split():
    settings = Settings.model_validate({"nats_url": "nats://a:4222, nats://b:4222"})
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222"]
