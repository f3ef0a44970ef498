"""The layers keep their direction: the HTTP API, the domains and the shared modules name no
transport module. They reach messaging through the bus and the neutral modules (dead letters,
claims, retries); a broker stays behind its package (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

from app.transports.registry import SPECS

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"

WITHOUT_TRANSPORTS = [
    *sorted((APP / "api").glob("*.py")),
    *sorted((APP / "example").glob("*.py")),
    *(
        APP / name
        for name in (
            "claims.py",
            "dead_letters.py",
            "errors.py",
            "kv.py",
            "messages.py",
            "retries.py",
            "services.py",
            "settings.py",
        )
    ),
]


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("path", WITHOUT_TRANSPORTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_api_domains_and_shared_modules_import_no_transport(path: Path):
    transports = sorted(m for m in imported_modules(path) if m.startswith("app.transports"))
    assert transports == [], f"{path.relative_to(ROOT)} imports {transports}"


def test_a_broker_package_imports_no_other_broker():
    packages = {p.name for p in (APP / "transports").iterdir() if (p / "__init__.py").exists()}
    for package in packages:
        for path in (APP / "transports" / package).glob("*.py"):
            others = {
                m
                for m in imported_modules(path)
                for other in packages - {package}
                if m.startswith(f"app.transports.{other}")
            }
            assert others == set(), f"{path.relative_to(ROOT)} imports {sorted(others)}"


CORE = [
    path
    for path in sorted(APP.rglob("*.py"))
    if not path.is_relative_to(APP / "transports")  # each transport's own package, the registry
    and not path.is_relative_to(APP / "chaos")  # the harness sets up each variant it tests
    and path.name != "settings.py"  # the defaults: APP_QOS1_TRANSPORT=jetstream
    and path.name != "testing.py"  # fixtures start each broker
]


def string_constants(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_names_no_transport(path: Path):
    """A transport is known by its descriptor: the router, the runtime and the API ask the
    registry, never compare a name of their own. (`nats` is left out: it is also the broker
    every instance has, for discovery, and the messaging system's name.)"""
    names = {name for name in SPECS if name != "nats"}
    found = sorted(names & string_constants(path))
    if path.name == "brokers.py":
        found = [name for name in found if name != "redis"]  # the broker, on /readyz
    assert found == [], f"{path.relative_to(ROOT)} names transport(s) {found}"
