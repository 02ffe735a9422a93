"""The search problem: schedules as genomes, the flat bit vectors the genetic algorithm works on.

A genome holds the bits of steps 1..N-1 only, in the layout's flat unit order,
step after step (``bits[1:].ravel()``). Step 0 is not part of the genome: it is
always recomputed (the engine does so whatever the bits say), so every genome
the search can produce decodes to a schedule whose step 0 is fully computed.
This is a hard constraint by representation, never a penalty, and no repair is
needed after crossover or mutation.

Two schedules that differ only in their step-0 bits have the same genome: they
run identically.

``GenomeProblem`` is the pymoo problem over those genomes: two minimised
objectives (quality loss, compute fraction) that are told to the algorithm,
never evaluated by pymoo itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelMismatchError, SearchSettingsError
from ..schedule import MAX_STEPS, Layout, Schedule


@dataclass(frozen=True)
class GenomeSpace:
    """The genomes of one search: a layout and a number of sampling steps."""

    layout: Layout
    steps: int

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)):
            raise SearchSettingsError(f"steps must be an integer, got {self.steps!r}")
        if not 2 <= int(self.steps) <= MAX_STEPS:
            raise SearchSettingsError(
                f"steps must be in 2..{MAX_STEPS} for a search (with 1 step there is nothing to cache: "
                f"step 0 is always computed), got {self.steps}"
            )
        object.__setattr__(self, "steps", int(self.steps))
        if self.layout.n_units < 1:
            raise SearchSettingsError(f"layout {self.layout.describe()} has no units to cache")

    @property
    def n_units(self) -> int:
        return self.layout.n_units

    @property
    def length(self) -> int:
        """Number of genome bits: (steps - 1) * units per step."""
        return (self.steps - 1) * self.layout.n_units

    # -- conversions ---------------------------------------------------------
    def encode(self, schedule: Schedule) -> np.ndarray:
        """Genome (bool [length]) of a schedule of this layout and step count."""
        schedule.check_fits(self.layout, "the search")
        if schedule.steps != self.steps:
            raise ModelMismatchError(
                f"schedule {schedule.name!r} has {schedule.steps} steps but the search runs {self.steps} steps"
            )
        return np.ascontiguousarray(schedule.bits[1:].reshape(-1), dtype=bool)

    def bits(self, genome) -> np.ndarray:
        """Effective bits (bool [steps, n_units]) of a genome; row 0 is all True."""
        g = self.check(genome)
        out = np.ones((self.steps, self.layout.n_units), bool)
        out[1:] = g.reshape(self.steps - 1, self.layout.n_units)
        return out

    def decode(self, genome, name: str = "candidate", **kw) -> Schedule:
        """A Schedule (step 0 computed) from a genome; ``kw`` go to Schedule (model, provenance, metrics)."""
        return Schedule(self.layout, self.bits(genome), name=name, **kw)

    def check(self, genome) -> np.ndarray:
        g = np.asarray(genome)
        if g.ndim != 1 or g.shape[0] != self.length:
            raise ValueError(
                f"genome must be a flat vector of {self.length} bits "
                f"({self.steps - 1} steps x {self.layout.n_units} units), got shape {g.shape}"
            )
        if g.dtype != bool:
            if not np.isin(g, (0, 1)).all():
                raise ValueError("genome values must be 0/1 or booleans")
            g = g.astype(bool)
        return g

    def key(self, genome) -> bytes:
        """Dedup key: the packed bits (identical schedules <=> identical keys within a space)."""
        return genome_key(self.check(genome))

    def from_key(self, key: bytes) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(key, np.uint8), count=self.length)
        return bits.astype(bool)


def genome_key(genome) -> bytes:
    """Bytes of the packed genome bits: the memo / duplicate key."""
    return np.packbits(np.asarray(genome, dtype=bool)).tobytes()


def tell(algorithm, pop, F: np.ndarray) -> None:
    """Give ``pop`` the objectives ``F`` as pymoo's own evaluation would."""
    from pymoo.core.evaluator import Evaluator as PymooEvaluator
    from pymoo.problems.static import StaticProblem

    PymooEvaluator().eval(StaticProblem(algorithm.problem, F=F), pop)


try:
    from pymoo.core.problem import Problem as _PymooProblem

    class GenomeProblem(_PymooProblem):
        """``n_var`` bits, 2 minimised objectives (quality loss, compute fraction), told to the algorithm."""

        def __init__(self, n_var: int):
            super().__init__(n_var=n_var, n_obj=2, xl=0, xu=1, vtype=bool)

        def _evaluate(self, x, out, *args, **kwargs):  # never called: objectives are told
            raise RuntimeError("ECAD search problems are evaluated outside pymoo")

    HAVE_PYMOO = True
except ImportError:  # pragma: no cover - pymoo is a dependency; run_search reports it
    HAVE_PYMOO = False
