"""Render the Helm chart offline with the Helm SDK (no cluster, no helm binary)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml  # type: ignore[import-untyped]

CHART = Path(__file__).resolve().parents[2] / "helm" / "qosmesh"
CI_VALUES = CHART / "ci"
RELEASE = "shop"
NAMESPACE = "prod"

Manifest = dict[str, Any]


def ci_values(name: str) -> dict[str, Any]:
    values = yaml.safe_load((CI_VALUES / f"{name}-values.yaml").read_text()) or {}
    assert isinstance(values, dict)
    return values


def render(values: dict[str, Any]) -> list[Manifest]:
    """Every manifest the chart renders for `values` (NOTES.txt aside).

    The chart is loaded afresh each time: rendering prunes disabled dependencies from the
    loaded chart's metadata.
    """
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[Manifest] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def one(docs: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} manifests"
    return found[0]


@pytest.fixture
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered() -> Callable[[str], list[Manifest]]:
    """`rendered("ha")` renders ci/ha-values.yaml (cached per module)."""
    cache: dict[str, list[Manifest]] = {}

    def get(name: str) -> list[Manifest]:
        if name not in cache:
            cache[name] = render(ci_values(name))
        return cache[name]

    return get
