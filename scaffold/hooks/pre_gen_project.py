"""Refuses bad answers before anything is generated, with one line per problem."""

import json
import sys
from pathlib import Path

CONTEXT = json.loads(r'{{ cookiecutter | tojson }}')  # fmt: skip

sys.path.insert(0, str(Path(CONTEXT["_repo_dir"])))
from generate import Options, check  # noqa: E402

problems = check(Options.from_context(CONTEXT))
for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
