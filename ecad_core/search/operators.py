"""The variation operators of the search, in pymoo's terms: crossover, mutation, duplicate elimination.

ECAD's setup: ``PointCrossover(n_points=4, prob=0.9)``, ``BitflipMutation``
(a per-bit flip probability; default one flipped bit per step on average,
``1 / units per step``) and duplicate elimination. ``make_algorithm`` puts them
into NSGA-II with the initial population as its sampling. An operator draws
random numbers only from the generator pymoo hands it (the algorithm's
``random_state``), so a checkpointed search resumes bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .problem import GenomeSpace

if TYPE_CHECKING:
    from .nsga import SearchSettings


def crossover(settings: SearchSettings, space: GenomeSpace) -> Any:
    from pymoo.operators.crossover.pntx import PointCrossover

    n_points = min(settings.crossover_points, max(1, space.length - 1))
    return PointCrossover(n_points=n_points, prob=settings.crossover_prob)


def mutation(settings: SearchSettings, space: GenomeSpace) -> Any:
    from pymoo.operators.mutation.bitflip import BitflipMutation

    return BitflipMutation(prob=1.0, prob_var=settings.bit_prob(space))


def make_algorithm(settings: SearchSettings, space: GenomeSpace, X0: np.ndarray) -> Any:
    """NSGA-II over ``space``'s genomes, its first population ``X0``, set up with the search's seed."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.termination import NoTermination

    from .problem import GenomeProblem

    # with screening, NSGA-II breeds more offspring than are evaluated (nsga.py picks them)
    n_off = settings.per_generation() * max(1, settings.screening)
    algorithm = NSGA2(
        pop_size=settings.population,
        n_offsprings=n_off,
        sampling=X0,
        crossover=crossover(settings, space),
        mutation=mutation(settings, space),
        eliminate_duplicates=True,
    )
    # the search decides when to stop (termination.py); pymoo never does
    algorithm.setup(GenomeProblem(space.length), termination=NoTermination(), seed=int(settings.seed), verbose=False)
    return algorithm
