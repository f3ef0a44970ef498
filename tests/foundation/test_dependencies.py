"""Installs are pinned: constraints.txt holds one version of each third-party package, within
pyproject.toml's bounds, and the test environment runs exactly those versions."""

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: {line!r} is not a pin (name==version)"
        pinned[canonicalize_name(name)] = version
    return pinned


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements() -> list[Requirement]:
    listed = [*PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        listed += extra
    return [Requirement(spec) for spec in listed]


def test_every_requirement_is_pinned_within_its_bounds():
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(PROJECT["name"]):
            continue  # an extra naming another extra of the project itself
        assert name in pinned, f"{requirement.name} is required but constraints.txt omits it"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{requirement.name}=={pinned[name]} is outside pyproject.toml's {requirement}"
        )


def test_the_test_environment_runs_the_pinned_versions():
    """dev.py installs with the constraints: a version that differs means an install that
    did not, or a constraints.txt changed without `python3 dev.py lock`."""
    drifted = {}
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # pinned for an extra this environment did not install
        if installed != version:
            drifted[name] = (installed, version)
    assert drifted == {}, f"installed vs pinned: {drifted}"
