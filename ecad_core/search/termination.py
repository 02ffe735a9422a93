"""When the search stops: a number of generations, a time budget, a cancel, or convergence.

pymoo's own termination is not used (``NoTermination``): a cancel must be able
to stop between two evaluation calls of a generation, and a resumed search may
be given another number of generations or another time budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable

GENERATIONS = "generations"
TIME_BUDGET = "time_budget"
CANCELLED = "cancelled"
CONVERGED = "converged"  # pymoo offered no new population


class Termination:
    """``generations``: the last generation to run (None: no limit); ``time_budget_s``: wall clock of this
    call, checked before each generation after the first (a started generation finishes); ``should_stop()``:
    polled before each generation and each evaluation call."""

    def __init__(
        self, generations: int | None, time_budget_s: float | None, should_stop: Callable[[], bool] | None = None
    ):
        self.generations = generations
        self.time_budget_s = time_budget_s
        self.should_stop = should_stop
        self.t_start = time.monotonic()

    def start(self) -> None:
        self.t_start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def cancelled(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def before_generation(self, g: int) -> str | None:
        """Why generation ``g`` is not run (``GENERATIONS``, ``TIME_BUDGET``, ``CANCELLED``), or None."""
        if self.generations is not None and g > self.generations:
            return GENERATIONS
        if self.time_budget_s is not None and g > 0 and self.elapsed() >= self.time_budget_s:
            return TIME_BUDGET
        if self.cancelled():
            return CANCELLED
        return None

    def total_generations(self) -> int:
        """Generations the search will run, the initial one included (0 when only a time budget bounds it)."""
        return self.generations + 1 if self.generations is not None else 0
