"""`python -m app` runs the service; `python -m app <command>` runs a CLI command."""

from __future__ import annotations

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
