"""The layers keep their direction. Every module of app/ belongs to one kind, and the kinds stand
in one order: a module imports only from its own kind or the kinds below it, and no modules
import each other in a circle. Within the order, the HTTP API and the domains name no transport
module (they reach messaging through the bus), and a broker stays behind its package
(docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

from app.transports.registry import SPECS

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"

KINDS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground",
        (
            "__init__.py",
            "messages.py",
            "errors.py",
            "settings.py",
            "logs.py",
            "supervision.py",
            "failpoints.py",
            "observability",
        ),
    ),
    ("qos", ("qos",)),
    ("brokers", ("brokers",)),
    ("stores", ("transports", "database", "discovery")),
    ("routing", ("bus", "coordination", "peers")),
    ("instance", ("instance",)),
    ("surfaces", ("api", "example")),
    ("entry points", ("cli", "main.py", "__main__.py", "testing", "chaos")),
]
"""The kinds of app/, lowest first, each with its files and folders (relative to app/)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(APP.rglob("*.py"))}


def rank_of(module: str) -> int:
    """The position of `module`'s kind in KINDS (ValueError for a module of no kind)."""
    relative = MODULES[module].relative_to(APP).as_posix()
    for rank, (_, places) in enumerate(KINDS):
        if any(relative == place or relative.startswith(place + "/") for place in places):
            return rank
    raise ValueError(f"{relative} belongs to no kind: add it to KINDS")


def resolve(name: str) -> str | None:
    """The app module an imported name lives in (a package's face for its re-exports)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def app_imports(path: Path) -> set[str]:
    """The app modules `path` imports, at run time or for type checking."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(m for m in map(resolve, names) if m and m.startswith("app"))
    found.discard(module_name(path))
    return found


GRAPH = {module: app_imports(path) for module, path in MODULES.items()}


def test_every_module_belongs_to_a_kind():
    for module in MODULES:
        rank_of(module)


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower kind to a higher one, as `module -> module (kind -> kind)`."""
    return [
        f"{module} -> {target} ({KINDS[rank_of(module)][0]} -> {KINDS[rank_of(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if rank_of(target) > rank_of(module)
    ]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_runs_from_a_lower_kind_to_a_higher_one():
    assert wrong_way(GRAPH) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(GRAPH) == []


def test_the_checks_see_an_import_the_wrong_way_and_a_circle():
    """The two checks above are not vacuous: a broker helper importing the instance is caught,
    and so is the circle it closes."""
    graph = {module: set(targets) for module, targets in GRAPH.items()}
    graph["app.brokers.kv"].add("app.instance.services")
    assert wrong_way(graph) == ["app.brokers.kv -> app.instance.services (brokers -> instance)"]
    assert any("app.brokers.kv" in group for group in circles(graph))


WITHOUT_TRANSPORTS = [
    *sorted((APP / "api").glob("*.py")),
    *sorted((APP / "example").glob("*.py")),
    APP / "instance" / "services.py",
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
    and not path.is_relative_to(APP / "testing")  # fixtures start each broker
    and path.name != "settings.py"  # the defaults: APP_QOS1_TRANSPORT=jetstream
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
    if path == APP / "brokers" / "connections.py":
        found = [name for name in found if name != "redis"]  # the broker, on /readyz
    assert found == [], f"{path.relative_to(ROOT)} names transport(s) {found}"
