"""Fail points: named places where a test can make an instance crash, so that a guarantee is
checked at the worst moment rather than by luck.

Inert unless armed: `QOSMESH_FAILPOINTS=name[,name...]` in the environment of a process
arms them for that process, and an armed point SIGKILLs the process the first time it is
reached (no cleanup, no flush: a crash). Unarmed, a point costs one set lookup.

The points:
- `relay.before_publish`: the relay has locked committed outbox rows and not published them;
- `relay.after_publish`: the broker acked a row, and the relay has not marked it sent;
- `inbox.before_ack`: a transactional handler's transaction committed, its delivery not acked.
"""

from __future__ import annotations

import os
import signal

ENV = "QOSMESH_FAILPOINTS"

_armed = frozenset(name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip())


def reached(name: str) -> None:
    """Crash here if `name` is armed."""
    if name in _armed:
        os.kill(os.getpid(), signal.SIGKILL)
