"""ECAD schedule search: NSGA-II over per-(step, block, component) cache bits.

Public API (ComfyUI-independent)::

    from ecad_core.search import (SearchSettings, run_search, LocalEvaluator, diffusers_generate_fn,
                                  pick, load_front, hypervolume)

    gen = diffusers_generate_fn(pipe, prompts, seeds=[0], steps=20, cfg=4.5, height=256, width=256)
    result = run_search(LocalEvaluator(gen), layout, 20, "out/search",
                        SearchSettings(population=24, generations=50))
    best = pick(result.front, target_speedup=2.0)
    best.schedule.save("my-schedule.json")

See docs/search.md.
"""
from .errors import CheckpointError, EvaluationError, SearchSettingsError
from .evaluate import DiffusersGenerate, Evaluator, LocalEvaluator, diffusers_generate_fn, fingerprint
from .front import (FrontPoint, dominates, hypervolume, knee, load_front, pareto_indices, pick, plot_front,
                    write_front)
from .genome import GenomeSpace, genome_key
from .nsga import SearchResult, SearchSettings, run_search
from .ray_backend import RayEvaluator  # imports ray only when one is created
from .objectives import ComputeCost, cost_for_transformer, macs_cost, measured_latency_cost, uniform_cost
from .seeds import heuristic_seeds, initial_population, load_warm_start

__all__ = [
    "SearchSettings", "SearchResult", "run_search",
    "Evaluator", "LocalEvaluator", "RayEvaluator", "DiffusersGenerate", "diffusers_generate_fn", "fingerprint",
    "FrontPoint", "pick", "knee", "hypervolume", "pareto_indices", "dominates", "write_front", "load_front",
    "plot_front",
    "GenomeSpace", "genome_key",
    "ComputeCost", "uniform_cost", "macs_cost", "cost_for_transformer", "measured_latency_cost",
    "initial_population", "heuristic_seeds", "load_warm_start",
    "SearchSettingsError", "CheckpointError", "EvaluationError",
]
