"""The settable clock of the tests (Store(clock=...), create_app's CLOCK)."""
from __future__ import annotations


class Clock:
    """A settable clock for Store(clock=...): unix seconds, starts at 2026-06-15 12:00 UTC."""

    def __init__(self, start: float = 1_781_524_800.0):
        self.t = float(start)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float = 0.0, *, days: float = 0.0) -> None:
        self.t += seconds + days * 86400
