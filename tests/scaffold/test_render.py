"""The cookiecutter scaffold: every option renders, names follow the service, nothing of the
template language is left, and the project is the live tree modulo the documented renames."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from scaffold.generate import (
    DATABASE_ONLY,
    EXAMPLE_ONLY,
    IGNORED_PARTS,
    SHARED_NAMES,
    Options,
    expected_files,
    tidy,
)
from tests.scaffold.conftest import ROOT, Render, run_cookiecutter

OPTION_SWITCHES = [
    {},
    {"include_example": "no"},
    {"database": "none"},
    {"include_helm": "no"},
    {"qos1_transport": "redis"},
    {"python_version": "3.12"},
    {"slug": "order-history-api", "service_name": "Order History"},
]
NOTE = "Generated from the qosmesh service template"
"""The README's one line naming where the project came from."""


def files(project: Path) -> dict[str, bytes]:
    """The project's files, without caches that tools write while the test runs."""
    return {
        p.relative_to(project).as_posix(): p.read_bytes()
        for p in sorted(project.rglob("*"))
        if p.is_file() and not IGNORED_PARTS & set(p.relative_to(project).parts)
    }


def answers_of(project: Path) -> Options:
    return Options.from_context(json.loads((project / ".scaffold.json").read_text()))


@pytest.mark.parametrize("answers", OPTION_SWITCHES, ids=lambda a: ",".join(a) or "defaults")
def test_render_leaves_no_template_syntax_and_no_template_name(render: Render, answers):
    """`qosmesh` survives only in the shared names (see SHARED_NAMES for why they are shared)
    and the README's note on where the project came from."""
    project = render(**answers)
    for relative, data in files(project).items():
        text = data.decode("utf-8", errors="replace")
        assert "{{ cookiecutter." not in text, relative
        assert "{{cookiecutter." not in text, relative
        assert "qosmesh" not in relative.lower(), relative
        for name in SHARED_NAMES:
            text = text.replace(name, "")
        text = text.replace(NOTE, "").replace('"template": "qosmesh scaffold', "")
        assert "qosmesh" not in text.lower(), f"{relative}: {text.lower().index('qosmesh')}"
    assert not (project / "tests" / "scaffold").exists()
    assert not (project / "docs" / "scaffold.md").exists()
    assert not (project / "scaffold").exists()


def test_default_render_names_follow_the_service(render: Render):
    project = render()
    slug = "my-service"
    assert project.name == slug
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == slug
    assert pyproject["project"]["authors"] == [{"name": "Your Name"}]
    assert not any(
        "cookiecutter" in dep for dep in pyproject["project"]["optional-dependencies"]["dev"]
    )
    settings = (project / "app" / "settings.py").read_text()
    assert f'service_name: str = "{slug}"' in settings
    assert 'discovery_bucket: str = "qosmesh_nodes"' in settings
    assert 'qos1_transport: TransportName = "jetstream"' in settings
    assert 'DEFAULT_DOMAIN = "app.example"' in settings
    chart = project / "helm" / slug
    assert f"name: {slug}\n" in (chart / "Chart.yaml").read_text()
    dashboard = json.loads((chart / "dashboards" / f"{slug}.json").read_text())
    assert (dashboard["title"], dashboard["uid"]) == (slug, f"{slug}-overview")
    assert f"APP_SERVICE_NAME: {slug}" in (chart / "values.yaml").read_text()
    readme = (project / "README.md").read_text()
    assert readme.startswith("# My Service\n")
    assert f"| APP_SERVICE_NAME | {slug} |" in readme
    assert "docs/scaffold.md" not in readme
    assert (project / "app" / "example").is_dir()
    assert (project / "dev.py").stat().st_mode & 0o111
    streams = (project / "tests" / "example" / "test_orders.py").read_text()
    assert '"MY-SERVICE_ORDER_PLACED"' in streams  # as app/transports/jetstream/streams.py names it
    cluster = (project / "tests" / "cluster" / "conftest.py").read_text()
    assert '"KV_my_service_processed"' in cluster


def test_example_off_leaves_out_the_example_and_its_tests(render: Render):
    project = render(include_example="no")
    for path in EXAMPLE_ONLY:
        assert not (project / path).exists(), path
    assert 'DEFAULT_DOMAIN = ""' in (project / "app" / "settings.py").read_text()
    readme = (project / "README.md").read_text()
    assert "| APP_DOMAIN |  |" in readme
    assert "chaos" not in readme  # the harness drives the example: it goes with it
    assert not re.findall(r"(?i)\borders\b|\bpayments?\b|\ban order\b", readme), "the example"
    assert "This service has no domain yet" in readme  # and the steps to add one
    left = [p for p in (project / "tests").rglob("*.py") if "app.example" in p.read_text()]
    assert left == []


def test_every_test_driving_the_example_is_left_out_with_it():
    """A new live test that needs the example domain must be listed in EXAMPLE_ONLY."""
    uses_example = re.compile(r"\bapp\.example\b|[\"']/orders|_ORDER_PLACED")
    designed_without = {
        "tests/foundation/test_without_example.py",
        "tests/deploy/test_keda.py",  # renders the example's type names as values, runs none
        "tests/foundation/test_quickstart.py",  # checks the example's part where it is there
    }
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tests").rglob("*.py")
        if "scaffold" not in p.parts and uses_example.search(p.read_text())
    ]
    listed = [
        o
        for o in offenders
        if o in designed_without or any(o == e or o.startswith(e + "/") for e in EXAMPLE_ONLY)
    ]
    assert offenders == listed


def test_no_database_leaves_out_the_database_code_its_dependencies_and_the_example(
    render: Render,
):
    project = render(database="none")
    for path in (*DATABASE_ONLY, *EXAMPLE_ONLY):
        assert not (project / path).exists(), path
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    dependencies = " ".join(
        [
            *pyproject["project"]["dependencies"],
            *pyproject["project"]["optional-dependencies"]["embedded"],
        ]
    )
    for package in ("sqlalchemy", "asyncpg", "alembic", "pgserver"):
        assert package not in dependencies
    database_code = re.compile(r"app\.database|sqlalchemy|asyncpg|PostgresServer|APP_DATABASE")
    left = [
        relative
        for relative, data in files(project).items()
        if relative.endswith((".py", ".toml", ".yaml", ".tpl"))
        and database_code.search(data.decode())
        and not relative.startswith("helm/")
    ]
    assert left == []
    values = (project / "helm" / "my-service" / "values.yaml").read_text()
    assert "required: false" in values
    assert "migrate: false" in values
    assert "APP_DATABASE_URL:" not in values
    assert "APP_DATABASE_URL" not in (project / "README.md").read_text()


def test_example_without_a_database_url_asks_the_chart_for_none(render: Render):
    """No domain keeps data, so the chart needs no database URL to render."""
    values = (render(include_example="no") / "helm" / "my-service" / "values.yaml").read_text()
    assert "  required: false\n" in values


def test_an_unknown_database_is_refused_by_the_hook(cookiecutter_env, tmp_path):
    result = run_cookiecutter(cookiecutter_env, tmp_path, {"database": "mysql"})
    assert result.returncode != 0
    assert "mysql provided for choice variable database" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_helm_off_leaves_out_the_chart_and_its_tests(render: Render):
    project = render(include_helm="no")
    assert not (project / "helm").exists()
    assert not (project / "tests" / "deploy" / "test_chart.py").exists()
    assert not (project / "tests" / "deploy" / "conftest.py").exists()
    assert (project / "tests" / "deploy" / "test_dockerfile.py").exists()


def test_redis_default_sets_the_setting_and_its_readme_row(render: Render):
    project = render(qos1_transport="redis")
    assert 'qos1_transport: TransportName = "redis"' in (project / "app/settings.py").read_text()
    assert "| APP_QOS1_TRANSPORT | redis |" in (project / "README.md").read_text()
    assert (
        'os.environ.setdefault("APP_QOS1_TRANSPORT", "jetstream")'
        in (project / "tests" / "conftest.py").read_text()
    )


def test_python_version_sets_tools_and_base_image(render: Render):
    project = render(python_version="3.12")
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.12"
    assert pyproject["tool"]["ruff"]["target-version"] == "py312"
    assert pyproject["tool"]["mypy"]["python_version"] == "3.12"
    assert "ARG PYTHON_IMAGE=python:3.12." in (project / "Dockerfile").read_text()


@pytest.mark.parametrize(
    "answers",
    [{}, {"include_example": "no", "include_helm": "no"}, {"database": "none"}],
    ids=["defaults", "no-example-no-helm", "no-database"],
)
def test_generated_files_are_the_live_files_modulo_the_renames(render: Render, answers, tmp_path):
    """Fails when the template and the live code disagree: the project holds exactly the live
    files (renamed and edited as docs/scaffold.md lists), formatted the same way."""
    project = render(**answers)
    expected = tmp_path / "expected"
    for relative, data in expected_files(ROOT, answers_of(project)).items():
        (expected / relative).parent.mkdir(parents=True, exist_ok=True)
        (expected / relative).write_bytes(data)
    tidy(expected, [str(Path(sys.executable).parent / "ruff")])
    generated = files(project)
    generated.pop(".scaffold.json")
    want = files(expected)
    assert sorted(generated) == sorted(want)
    differing = [name for name in want if generated[name] != want[name]]
    assert differing == []


@pytest.mark.parametrize(
    "slug", ["Billing", "1billing", "billing_api", "-billing", "billing-", "a--b", "x" * 41]
)
def test_invalid_slug_is_refused_by_the_hook_with_a_clear_message(cookiecutter_env, tmp_path, slug):
    result = run_cookiecutter(cookiecutter_env, tmp_path, {"slug": slug})
    assert result.returncode != 0
    assert f"error: slug {slug!r} is invalid: use lowercase letters" in result.stderr
    assert "pre_gen_project hook" in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []
