"""Fills the new project from the live tree of the repository the template lives in: the
scaffold is one source of truth with the code it generates (docs/scaffold.md)."""

import json
import sys
from pathlib import Path

CONTEXT = json.loads(r'{{ cookiecutter | tojson }}')  # fmt: skip
REPO_DIR = Path(CONTEXT["_repo_dir"])  # <repository>/scaffold

sys.path.insert(0, str(REPO_DIR))
from generate import GenerationError, Options, find_ruff, generate, tidy  # noqa: E402

try:
    generate(REPO_DIR.parent, Path.cwd(), Options.from_context(CONTEXT))
except GenerationError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)

ruff = find_ruff(REPO_DIR.parent)
if ruff is None:
    print(
        "note: ruff not found, so the renamed code is not re-formatted: after the first "
        "`python3 dev.py test`, run `.venv/bin/ruff format . && .venv/bin/ruff check --fix .`",
        file=sys.stderr,
    )
else:
    tidy(Path.cwd(), ruff)
