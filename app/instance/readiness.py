"""Whether this instance is ready: the named checks its parts add, and the drain. /readyz
reports it; the drain turns it off first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

ReadinessCheck = Callable[[], Awaitable[dict[str, str]]]


class Readiness:
    """Named checks; the instance is ready only while every required one answers "ok". A check
    added as not required is reported and fails nothing (the brokers, for a service whose
    commands wait in the database's outbox while they are away)."""

    def __init__(self) -> None:
        self._checks: list[tuple[ReadinessCheck, bool]] = []
        self.draining = False

    def add(self, check: ReadinessCheck, *, required: bool = True) -> None:
        self._checks.append((check, required))

    async def evaluate(self) -> tuple[dict[str, str], bool]:
        """Every check's answer, and whether the instance is ready."""
        results: dict[str, str] = {}
        ready = not self.draining
        for check, required in self._checks:
            answers = await check()
            results.update(answers)
            if required and any(value != "ok" for value in answers.values()):
                ready = False
        if self.draining:
            results["lifecycle"] = "draining"
        return results, ready and bool(results)
