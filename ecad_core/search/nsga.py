"""NSGA-II over cache-schedule genomes, one generation at a time, with checkpoints.

ECAD's setup: binary genomes (``genome.py``), the initial population from
``seeds.py``, ``PointCrossover(n_points=4, prob=0.9)``, ``BitflipMutation``
(per-bit probability a setting; default one flipped bit per step on average,
``1 / units_per_step``), duplicate elimination, and two minimised objectives:
(1) the evaluator's quality loss, (2) the fraction of full-compute MACs.

The loop runs generation by generation (pymoo ``ask``/``tell``). Generation 0
is the initial population; ``generations`` counts the evolved generations after
it. A genome is never evaluated twice: every result goes into a memo keyed by
the genome's packed bits, and the memo is part of the checkpoint.

After every generation ``<out>/checkpoint.pkl`` is rewritten atomically: the
pickled pymoo algorithm (population, objectives, its ``random_state``), the
memo, numpy's and Python's global RNG states, the settings, the generation and
the history. A search started again on the same folder with the same settings
resumes from it (``generations`` and ``time_budget_s`` may differ) and ends
with exactly the front an uninterrupted run would have found. Cancelling
mid-generation keeps the results evaluated so far in the memo; the resumed run
redoes that generation from the checkpoint, so it draws the same offspring
and finds them in the memo.

The checkpoint is a pickle: only resume from folders you wrote yourself.

The front (``front.py``) is the non-dominated set of *all* evaluated genomes
(an archive), so it never gets worse from one generation to the next.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..layout import Layout
from .errors import CheckpointError, EvaluationError, SearchSettingsError
from .evaluate import Evaluator, Progress, fingerprint
from .front import FrontPoint, hypervolume, pareto_indices, write_front
from .genome import GenomeSpace, genome_key
from .objectives import ComputeCost, uniform_cost
from .seeds import initial_population, load_warm_start

log = logging.getLogger("ecad.search")

CHECKPOINT_FILE = "checkpoint.pkl"
PROGRESS_FILE = "progress.json"
EVALUATIONS_FILE = "evaluations.csv"
FRONT_DIR = "front"
CHECKPOINT_FORMAT = "comfyui-ecad/search-checkpoint"
CHECKPOINT_VERSION = 1
# what NSGA-II sees for a schedule whose outputs were not finite (NaN/inf)
BAD_LOSS = 1e6


@dataclass
class SearchSettings:
    """Settings of one search. All but ``generations`` and ``time_budget_s`` must match on resume."""

    population: int = 24
    generations: int | None = 10          # evolved generations after generation 0 (the seeds)
    time_budget_s: float | None = None    # wall clock of this call; a started generation finishes
    seed: int = 0
    crossover_points: int = 4
    crossover_prob: float = 0.9
    mutation_prob: float | None = None    # per-bit flip probability; None: 1 / units per step
    heuristic_seeds: bool = True          # add seeds.py's heuristics to the initial population
    quality_scale: float = 1.0            # loss scale for the hypervolume (reference point (1, 1))

    RESUME_FREE = ("generations", "time_budget_s")

    def validate(self) -> None:
        def bad(msg):
            raise SearchSettingsError(msg)

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not is_int(self.population) or self.population < 2:
            bad(f"population must be an integer >= 2 (NSGA-II mates pairs), got {self.population!r}")
        if self.generations is not None and (not is_int(self.generations) or self.generations < 1):
            bad(f"generations must be an integer >= 1 (or None to stop by time only), got {self.generations!r}")
        if self.time_budget_s is not None:
            if isinstance(self.time_budget_s, bool) or not isinstance(self.time_budget_s, (int, float)) \
                    or not math.isfinite(self.time_budget_s) or self.time_budget_s <= 0:
                bad(f"time budget must be a positive number of seconds, got {self.time_budget_s!r}")
        if self.generations is None and self.time_budget_s is None:
            bad("give a number of generations, a time budget, or both: the search would never stop")
        if not is_int(self.seed) or self.seed < 0:
            bad(f"seed must be a non-negative integer, got {self.seed!r}")
        if not is_int(self.crossover_points) or self.crossover_points < 1:
            bad(f"crossover points must be an integer >= 1, got {self.crossover_points!r}")
        if not _prob(self.crossover_prob):
            bad(f"crossover probability must be in [0, 1], got {self.crossover_prob!r}")
        if self.mutation_prob is not None and (not _prob(self.mutation_prob) or self.mutation_prob == 0):
            bad(f"mutation probability (per bit) must be in (0, 1], got {self.mutation_prob!r}")
        if isinstance(self.quality_scale, bool) or not isinstance(self.quality_scale, (int, float)) \
                or not self.quality_scale > 0 or not math.isfinite(self.quality_scale):
            bad(f"quality scale must be a positive number, got {self.quality_scale!r}")

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def resume_key(self) -> dict:
        return {k: v for k, v in self.to_json().items() if k not in self.RESUME_FREE}

    def bit_prob(self, space: GenomeSpace) -> float:
        return float(self.mutation_prob) if self.mutation_prob is not None else 1.0 / space.n_units


def _prob(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v <= 1.0


@dataclass
class SearchResult:
    front: list[FrontPoint]
    generation: int                  # last completed generation (0 = the initial population)
    evaluations: int                 # distinct genomes evaluated (this run and resumed ones)
    stopped: str                     # "generations" | "time_budget" | "cancelled" | "converged"
    hypervolume: float
    history: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    front_dir: Path | None = None
    checkpoint: Path | None = None
    resumed_from: int | None = None  # generation of the checkpoint this run resumed from
    archive: np.ndarray | None = None  # [n, 2] objectives of every evaluated genome, in evaluation order


def _make_problem(n_var: int):
    return _GenomeProblem(n_var)


try:  # module-level class so the pickled algorithm can be loaded again
    from pymoo.core.problem import Problem as _PymooProblem

    class _GenomeProblem(_PymooProblem):
        def __init__(self, n_var: int):
            super().__init__(n_var=n_var, n_obj=2, xl=0, xu=1, vtype=bool)

        def _evaluate(self, x, out, *args, **kwargs):  # never called: objectives are told
            raise RuntimeError("ECAD search problems are evaluated outside pymoo")
except ImportError:  # pragma: no cover - pymoo is a dependency; run_search reports it
    _PymooProblem = None


def _pymoo_version() -> str:
    import pymoo
    return getattr(pymoo, "__version__", "?")


def _make_algorithm(settings: SearchSettings, space: GenomeSpace, X0: np.ndarray):
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.termination import NoTermination
    from pymoo.operators.crossover.pntx import PointCrossover
    from pymoo.operators.mutation.bitflip import BitflipMutation

    n_points = min(settings.crossover_points, max(1, space.length - 1))
    algorithm = NSGA2(pop_size=settings.population, sampling=X0,
                      crossover=PointCrossover(n_points=n_points, prob=settings.crossover_prob),
                      mutation=BitflipMutation(prob=1.0, prob_var=settings.bit_prob(space)),
                      eliminate_duplicates=True)
    algorithm.setup(_make_problem(space.length), termination=NoTermination(), seed=int(settings.seed),
                    verbose=False)
    return algorithm


class _State:
    """Everything a checkpoint holds."""

    def __init__(self):
        self.algo_blob: bytes = b""
        self.memo: dict[bytes, list] = {}      # key -> [loss, compute_fraction, first generation]
        self.next_gen = 0                       # the generation to run next
        self.history: list[dict] = []
        self.seed_keys: list[bytes] = []
        self.elapsed_s = 0.0                    # wall clock over all sessions


def run_search(evaluator: Evaluator, layout: Layout, steps: int, out_dir: str | Path | None,
               settings: SearchSettings | None = None, *, cost: ComputeCost | None = None,
               warm_start: Sequence = (), warm_start_steps: str = "refuse", model: str | None = None,
               progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
               resume: bool = True, write_files: bool = True) -> SearchResult:
    """Search cache schedules for ``layout`` at ``steps`` steps; see the module docstring.

    ``evaluator``: anything with ``evaluate(list[Schedule]) -> list[float]``.
    ``cost``: the compute objective (default: every unit costs the same).
    ``warm_start``: schedule files, folders (e.g. an earlier ``front/``) or
    Schedules put first into the initial population; a step count other than
    ``steps`` is refused unless ``warm_start_steps="remap"``.
    ``progress(phase, done, total)``: phases ``reference`` (0/1, 1/1),
    ``evaluate`` (schedules evaluated in the current generation / new ones in
    it) and ``generation`` (completed generations / generations + 1; total 0
    when only a time budget bounds the search).
    ``should_stop()``: polled before each evaluation call; when it returns True
    the search returns with ``stopped="cancelled"`` (checkpoint and front saved).
    ``out_dir``: folder of the checkpoint, reference outputs, ``progress.json``,
    ``evaluations.csv`` and ``front/``; None keeps everything in memory.
    """
    if _PymooProblem is None:
        raise SearchSettingsError("the schedule search needs the 'pymoo' package (pip install pymoo)")
    settings = settings or SearchSettings()
    settings.validate()
    if not hasattr(evaluator, "evaluate") or not callable(evaluator.evaluate):
        raise SearchSettingsError("evaluator must have an evaluate(schedules) -> losses method")
    space = GenomeSpace(layout, steps)
    cost = cost or uniform_cost(layout, space.steps)
    if cost.unit.shape != (space.steps, layout.n_units):
        raise SearchSettingsError(f"the cost table is for {cost.unit.shape[0]} steps x {cost.unit.shape[1]} "
                                  f"units, the search for {space.steps} x {layout.n_units}")
    out = Path(out_dir) if out_dir is not None else None
    warm = load_warm_start(warm_start, space, warm_start_steps)
    pop0 = initial_population(space, settings.population, seed=settings.seed, warm_start=warm,
                              heuristics=settings.heuristic_seeds)
    describe = evaluator.describe() if callable(getattr(evaluator, "describe", None)) else {}
    ident = {"settings": settings.resume_key(), "layout": [layout.family, layout.to_json()], "steps": space.steps,
             "cost": cost.describe(), "evaluator": describe,
             "initial_population": fingerprint([genome_key(space.encode(s)).hex() for s in pop0])}
    fp = fingerprint(ident)
    ckpt = out / CHECKPOINT_FILE if out is not None else None

    state = None
    if resume and ckpt is not None and ckpt.is_file():
        state = _load_checkpoint(ckpt, fp, ident)
    resumed_from = state.next_gen - 1 if state is not None else None
    if state is None:
        state = _State()
        X0 = np.stack([space.encode(s) for s in pop0])
        algorithm = _make_algorithm(settings, space, X0)
        state.seed_keys = [genome_key(x) for x in X0]
        state.algo_blob = pickle.dumps(algorithm, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        algorithm = pickle.loads(state.algo_blob)
    seed_names = {genome_key(space.encode(s)): s for s in pop0}

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if callable(getattr(evaluator, "prepare", None)):
        evaluator.prepare(out, fp, progress)

    total_gens = settings.generations + 1 if settings.generations is not None else 0
    batch = getattr(evaluator, "batch_size", None)
    t_start = time.monotonic()
    elapsed0 = state.elapsed_s
    stopped = None

    def save():
        state.elapsed_s = elapsed0 + (time.monotonic() - t_start)
        if ckpt is not None:
            _save_checkpoint(ckpt, state, settings, fp, ident)

    while True:
        g = state.next_gen
        if settings.generations is not None and g > settings.generations:
            stopped = "generations"
            break
        if settings.time_budget_s is not None and g > 0 and time.monotonic() - t_start >= settings.time_budget_s:
            stopped = "time_budget"
            break
        if should_stop is not None and should_stop():
            stopped = "cancelled"
            break
        pop = algorithm.ask()
        if pop is None or len(pop) == 0:
            stopped = "converged"
            break
        X = np.asarray(pop.get("X")).astype(bool)
        keys = [genome_key(x) for x in X]
        new, seen = [], set()
        for k, x in zip(keys, X):
            if k not in state.memo and k not in seen:
                seen.add(k)
                new.append((k, x))
        n_hits = len(keys) - len(new)
        step = len(new) if not batch else int(batch)
        done = 0
        cancelled = False
        if progress:
            progress("evaluate", 0, len(new))
        try:
            for i in range(0, len(new), max(step, 1)):
                if should_stop is not None and should_stop():
                    cancelled = True
                    break
                chunk = new[i:i + step]
                scheds = []
                for j, (k, x) in enumerate(chunk):
                    origin = seed_names.get(k)
                    name = origin.name if (g == 0 and origin is not None) else f"gen{g:03d}-{done + j:03d}"
                    scheds.append(space.decode(x, name=name, model=model))
                losses = evaluator.evaluate(scheds)
                losses = list(losses) if losses is not None else []
                if len(losses) != len(scheds):
                    raise EvaluationError(f"the evaluator returned {len(losses)} loss(es) for {len(scheds)} "
                                          "schedule(s)")
                for (k, x), s, loss in zip(chunk, scheds, losses):
                    loss = float(loss)
                    if math.isnan(loss):
                        loss = math.inf
                    state.memo[k] = [loss, cost.fraction(s.bits), g]
                done += len(chunk)
                if progress:
                    progress("evaluate", done, len(new))
        except BaseException:
            # an error or an interrupt (Ctrl-C, ComfyUI's cancel) inside an evaluation: keep what
            # was evaluated; a resume redoes this generation and finds those results in the memo
            if done:
                save()
            raise
        if cancelled:
            stopped = "cancelled"
            save()  # the last generation's algorithm state + everything evaluated so far
            break

        F = np.array([[min(state.memo[k][0], BAD_LOSS), state.memo[k][1]] for k in keys], np.float64)
        from pymoo.core.evaluator import Evaluator as _PymooEvaluator
        from pymoo.problems.static import StaticProblem
        _PymooEvaluator().eval(StaticProblem(algorithm.problem, F=F), pop)
        algorithm.tell(infills=pop)
        state.algo_blob = pickle.dumps(algorithm, protocol=pickle.HIGHEST_PROTOCOL)
        state.next_gen = g + 1
        allF = _archive(state)
        hv = hypervolume(allF, quality_scale=settings.quality_scale)
        state.history.append({"generation": g, "asked": len(keys), "evaluated": len(new), "memo_hits": n_hits,
                              "evaluations_total": len(state.memo), "front_size": len(pareto_indices(allF)),
                              "hypervolume": hv,
                              "elapsed_s": round(elapsed0 + time.monotonic() - t_start, 3)})
        save()
        if out is not None:
            _write_progress(out, state, settings)
        if progress:
            progress("generation", g + 1, total_gens)
        log.info("ECAD search: generation %d: %d new, %d memo hits, front %d, HV %.6f", g, len(new), n_hits,
                 state.history[-1]["front_size"], hv)

    front = _front(state, space, settings, cost, describe, model, seed_names)
    allF = _archive(state)
    hv = hypervolume(allF, quality_scale=settings.quality_scale) if len(allF) else 0.0
    front_dir = None
    if out is not None and write_files:
        _write_progress(out, state, settings, stopped)
        _write_evaluations(out / EVALUATIONS_FILE, state)
        seedF = np.array([[state.memo[k][0], state.memo[k][1]] for k in state.seed_keys if k in state.memo])
        title = f"{model or layout.family}: {space.steps} steps, gen {state.next_gen - 1}, " \
                f"{len(state.memo)} evaluated, HV {hv:.4f}"
        info = {"settings": settings.to_json(), "steps": space.steps, "layout": layout.describe(),
                "model": model, "cost": cost.describe(), "evaluator": describe, "quality_metric":
                describe.get("metric"), "generation": state.next_gen - 1, "evaluations": len(state.memo),
                "hypervolume": hv, "stopped": stopped, "title": title}
        front_dir = write_front(out / FRONT_DIR, front, info=info, all_objectives=allF, seed_objectives=seedF)
    return SearchResult(front=front, generation=state.next_gen - 1, evaluations=len(state.memo), stopped=stopped,
                        hypervolume=hv, history=list(state.history), out_dir=out, front_dir=front_dir,
                        checkpoint=ckpt if ckpt is not None and ckpt.is_file() else None,
                        resumed_from=resumed_from, archive=allF)


# -- helpers -------------------------------------------------------------------------
def _archive(state: _State) -> np.ndarray:
    if not state.memo:
        return np.zeros((0, 2))
    return np.array([[v[0], v[1]] for v in state.memo.values()], np.float64)


def _compact_description(d: dict) -> dict:
    out = dict(d)
    if isinstance(out.get("prompts"), list):
        p = out["prompts"]
        out["prompts"] = {"count": len(p), "sha256_16": fingerprint(p), "first": p[0][:120] if p else None}
    return out


def _front(state: _State, space: GenomeSpace, settings: SearchSettings, cost: ComputeCost, describe: dict,
           model: str | None, seed_names: dict) -> list[FrontPoint]:
    keys = list(state.memo)
    F = _archive(state)
    metric = describe.get("metric", "quality")
    prov_common = {"settings": settings.to_json(), "cost": cost.describe(),
                   "evaluator": _compact_description(describe)}
    pts = []
    for rank, i in enumerate(pareto_indices(F)):
        k = keys[i]
        loss, frac, gen = state.memo[k]
        origin = seed_names.get(k) if gen == 0 else None
        label = f"x{1.0 / frac:.2f}"
        name = f"ecad-search-{model or space.layout.family}-{label}"
        prov = {"search": {**prov_common, "generation": int(gen), "seed": settings.seed}}
        if origin is not None:
            prov["search"]["initial"] = origin.provenance.get("search_seed", {"kind": "seed"})
            prov["search"]["initial_name"] = origin.name
        metrics = {"quality_loss": loss, "quality_metric": metric, "compute_fraction": frac,
                   "expected_speedup": 1.0 / frac, "compute_model": cost.source}
        s = space.decode(space.from_key(k), name=name, model=model, provenance=prov, metrics=metrics)
        pts.append(FrontPoint(s, loss, frac, int(gen)))
    return pts


def _save_checkpoint(path: Path, state: _State, settings: SearchSettings, fp: str, ident: dict) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "pymoo": _pymoo_version(),
        "fingerprint": fp, "ident": ident, "settings": settings.to_json(),
        "next_gen": state.next_gen, "algorithm": state.algo_blob, "memo": state.memo,
        "history": state.history, "seed_keys": state.seed_keys, "elapsed_s": state.elapsed_s,
        "numpy_global_state": np.random.get_state(), "python_random_state": random.getstate(),
    }
    buf = io.BytesIO()
    pickle.dump(payload, buf, protocol=pickle.HIGHEST_PROTOCOL)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _load_checkpoint(path: Path, fp: str, ident: dict) -> _State:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read the search checkpoint ({e}); delete it to start over") from None
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a comfyui-ecad search checkpoint")
    if d.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {d.get('version')!r}; this build reads "
                              f"{CHECKPOINT_VERSION}")
    if d.get("pymoo") != _pymoo_version():
        raise CheckpointError(f"{path}: written with pymoo {d.get('pymoo')}, this is pymoo {_pymoo_version()}; "
                              "resume with the same pymoo version or use another output folder")
    if d.get("fingerprint") != fp:
        old = d.get("ident", {})
        diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        detail = ""
        if "settings" in diff:
            so, sn = old.get("settings", {}), ident.get("settings", {})
            detail = "; settings: " + ", ".join(f"{k} {so.get(k)!r} -> {sn.get(k)!r}"
                                                 for k in sorted(set(so) | set(sn)) if so.get(k) != sn.get(k))
        raise CheckpointError(f"{path}: this folder holds a search with other settings (differs in "
                              f"{', '.join(diff) or 'details'}{detail}); use another output folder, or delete "
                              "the checkpoint to start over")
    st = _State()
    st.algo_blob = d["algorithm"]
    st.memo = d["memo"]
    st.next_gen = int(d["next_gen"])
    st.history = list(d["history"])
    st.seed_keys = list(d["seed_keys"])
    st.elapsed_s = float(d.get("elapsed_s", 0.0))
    np.random.set_state(d["numpy_global_state"])
    random.setstate(d["python_random_state"])
    return st


def _write_progress(out: Path, state: _State, settings: SearchSettings, stopped: str | None = None) -> None:
    d = {"generation": state.next_gen - 1, "evaluations": len(state.memo), "settings": settings.to_json(),
         "stopped": stopped, "elapsed_s": round(state.elapsed_s, 3), "history": state.history}
    tmp = out / (PROGRESS_FILE + ".tmp")
    tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / PROGRESS_FILE)


def _write_evaluations(path: Path, state: _State) -> None:
    lines = ["index,generation,quality_loss,compute_fraction,expected_speedup"]
    for i, (loss, frac, gen) in enumerate(state.memo.values()):
        lines.append(f"{i},{gen},{loss!r},{frac!r},{1.0 / frac!r}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
