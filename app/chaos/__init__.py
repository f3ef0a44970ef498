"""Fault schedules: a seeded, Jepsen-style harness for the QoS 1 and QoS 2 promises.

Real instances of the service (with the example domain) and real brokers run on loopback;
clients drive the REST API while a nemesis breaks processes and links on a seeded schedule;
the history of every request is then checked against what the system holds once healed.
`python -m app.chaos --help` runs schedules; docs/reliability.md says more.
"""

from app.chaos.checker import Observed, StoredOrder, Violation, check
from app.chaos.history import Attempt, Operation
from app.chaos.run import Report, run
from app.chaos.schedule import VARIANTS, Fault, Schedule, kinds_of, plan

__all__ = [
    "VARIANTS",
    "Attempt",
    "Fault",
    "Observed",
    "Operation",
    "Report",
    "Schedule",
    "StoredOrder",
    "Violation",
    "check",
    "kinds_of",
    "plan",
    "run",
]
