"""ECAD schedule search: NSGA-II over per-(step, block, component) cache bits. The optimiser only: it scores
schedules through an ``Evaluator`` and never touches a model (no diffusers, no engine).

Public API (ComfyUI-independent)::

    from ecad_core.diffusers.generate import diffusers_generate_fn
    from ecad_core.search import SearchSettings, run_search, LocalEvaluator, pick, load_front, hypervolume

    gen = diffusers_generate_fn(pipe, prompts, seeds=[0], steps=20, cfg=4.5, height=256, width=256)
    result = run_search(LocalEvaluator(gen), layout, 20, "out/search",
                        SearchSettings(population=24, generations=50))
    best = pick(result.front, target_speedup=2.0)
    best.schedule.save("my-schedule.json")

See docs/search.md and docs/architecture.md.
"""

from ..errors import CheckpointError, EvaluationError, SearchSettingsError
from .evaluate import Evaluator, LocalEvaluator, fingerprint
from .front import FrontPoint, dominates, hypervolume, knee, load_front, pareto_indices, pick, plot_front, write_front
from .nsga import SearchResult, SearchRun, SearchSettings, run_search
from .problem import GenomeSpace, genome_key
from .ray_backend import RayEvaluator  # imports ray only when one is created
from .sampling import heuristic_seeds, initial_population, load_warm_start
from .termination import Termination

__all__ = [
    "CheckpointError",
    "EvaluationError",
    "Evaluator",
    "FrontPoint",
    "GenomeSpace",
    "LocalEvaluator",
    "RayEvaluator",
    "SearchResult",
    "SearchRun",
    "SearchSettings",
    "SearchSettingsError",
    "Termination",
    "dominates",
    "fingerprint",
    "genome_key",
    "heuristic_seeds",
    "hypervolume",
    "initial_population",
    "knee",
    "load_front",
    "load_warm_start",
    "pareto_indices",
    "pick",
    "plot_front",
    "run_search",
    "write_front",
]
