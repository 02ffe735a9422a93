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

After every generation ``<out>/checkpoint.safetensors`` is rewritten atomically.
It holds data only, nothing that runs as code: arrays (the memo; NSGA-II's
surviving population with its objectives, ranks and crowding distances) and,
as JSON in the safetensors metadata, the settings, the generation, the history
and the algorithm's random generator state (numpy's bit-generator state dict).
A search started again on the same folder with the same settings rebuilds
NSGA-II from that population and generator state and resumes (``generations``
and ``time_budget_s`` may differ); it ends with exactly the front an
uninterrupted run would have found. Cancelling mid-generation keeps the
results evaluated so far in the memo; the resumed run redoes that generation
from the checkpoint, so it draws the same offspring and finds them in the memo.

The search draws random numbers only from NSGA-II's own ``np.random.Generator``
(pymoo's per-algorithm ``random_state``, seeded by ``SearchSettings.seed``) and
the seeded generator of ``seeds.py``: numpy's and Python's global random
states are never read or changed. A checkpoint is tied to the pymoo version
that wrote it (the operators' use of the generator may change between
versions). An old pickle checkpoint (``checkpoint.pkl``) is refused, never
loaded: such a search must be started over.

The front (``front.py``) is the non-dominated set of *all* evaluated genomes
(an archive), so it never gets worse from one generation to the next.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
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

CHECKPOINT_FILE = "checkpoint.safetensors"
# what earlier versions wrote: a pickle, refused (loading a pickle can run code)
LEGACY_CHECKPOINT_FILES = ("checkpoint.pkl",)
PROGRESS_FILE = "progress.json"
EVALUATIONS_FILE = "evaluations.csv"
FRONT_DIR = "front"
CHECKPOINT_FORMAT = "comfyui-ecad/search-checkpoint"
CHECKPOINT_VERSION = 2
_META_KEY = "comfyui-ecad"  # the safetensors metadata entry holding the JSON part
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


try:
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


def _tell(algorithm, pop, F: np.ndarray) -> None:
    """Give ``pop`` the objectives ``F`` as pymoo's own evaluation would."""
    from pymoo.core.evaluator import Evaluator as _PymooEvaluator
    from pymoo.problems.static import StaticProblem

    _PymooEvaluator().eval(StaticProblem(algorithm.problem, F=F), pop)


# per-individual attributes NSGA-II reads when it mates the survivors (besides X and F)
_POP_DATA = {"rank": np.int64, "crowding": np.float64, "n_gen": np.int64, "n_iter": np.int64}


def _snapshot(algorithm) -> dict:
    """NSGA-II after a completed generation, as plain arrays and the generator state."""
    pop = algorithm.pop
    snap = {"X": np.ascontiguousarray(pop.get("X"), dtype=bool),
            "F": np.ascontiguousarray(pop.get("F"), dtype=np.float64),
            "algorithm_n_iter": int(algorithm.n_iter),
            "rng": _plain(algorithm.random_state.bit_generator.state)}
    for k, dt in _POP_DATA.items():
        snap[k] = np.ascontiguousarray(pop.get(k), dtype=dt)
    return snap


def _restore(algorithm, snap: dict) -> None:
    """Make a freshly set-up NSGA-II continue exactly where ``snap`` was taken."""
    from pymoo.core.population import Population

    pop = Population.new("X", snap["X"])
    _tell(algorithm, pop, snap["F"])
    for k in _POP_DATA:
        pop.set(k, snap[k])
    algorithm.pop = pop
    algorithm.off = None
    algorithm.n_iter = snap["algorithm_n_iter"]
    algorithm.is_initialized = True
    algorithm.random_state.bit_generator.state = snap["rng"]
    algorithm._set_optimum()


def _plain(state: dict) -> dict:
    """A bit-generator state with plain Python values (JSON)."""
    return json.loads(json.dumps(state, default=int))


class _State:
    """Everything a checkpoint holds."""

    def __init__(self):
        self.algo: dict | None = None           # _snapshot after the last completed generation (None: none yet)
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
    if resume and out is not None:
        _refuse_legacy(out)
        if os.path.lexists(ckpt):
            if not ckpt.is_file():  # a folder or a FIFO: never read (a FIFO would block)
                raise CheckpointError(f"{ckpt}: not a regular file; {_START_OVER}")
            state = _load_checkpoint(ckpt, fp, ident, space)
    resumed_from = state.next_gen - 1 if state is not None else None
    X0 = np.stack([space.encode(s) for s in pop0])
    algorithm = _make_algorithm(settings, space, X0)
    if state is None:
        state = _State()
        state.seed_keys = [genome_key(x) for x in X0]
    elif state.algo is not None:
        try:
            _restore(algorithm, state.algo)
        except Exception as e:  # noqa: BLE001 - data that passed the checks but pymoo cannot take
            raise CheckpointError(f"{ckpt}: cannot rebuild the search from this checkpoint ({e}); "
                                  f"{_START_OVER}") from None
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
            _save_checkpoint(ckpt, state, settings, fp, ident, space)

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
        _tell(algorithm, pop, F)
        algorithm.tell(infills=pop)
        state.algo = _snapshot(algorithm)
        state.next_gen = g + 1
        allF = _archive(state)
        hv = hypervolume(allF, quality_scale=settings.quality_scale)
        # first evaluated in this generation, also by a session cancelled inside it: a resumed history is
        # the uninterrupted one
        n_new = len({k for k in keys if state.memo[k][2] == g})
        n_hits = len(keys) - n_new
        state.history.append({"generation": g, "asked": len(keys), "evaluated": n_new, "memo_hits": n_hits,
                              "evaluations_total": len(state.memo), "front_size": len(pareto_indices(allF)),
                              "hypervolume": hv,
                              "elapsed_s": round(elapsed0 + time.monotonic() - t_start, 3)})
        save()
        if out is not None:
            _write_progress(out, state, settings)
        if progress:
            progress("generation", g + 1, total_gens)
        log.info("ECAD search: generation %d: %d new, %d memo hits, front %d, HV %.6f", g, n_new, n_hits,
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


_INT64 = 2 ** 63


def _int64_safe(o):
    """``o`` with integers beyond int64 (ComfyUI noise seeds reach 2**64 - 1) as decimal strings: schedule
    files hold only integers every JSON reader keeps exactly."""
    if isinstance(o, dict):
        return {k: _int64_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_int64_safe(v) for v in o]
    if isinstance(o, int) and not isinstance(o, bool) and not -_INT64 < o < _INT64:
        return str(o)
    return o


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
        s = space.decode(space.from_key(k), name=name, model=model, provenance=_int64_safe(prov), metrics=metrics)
        pts.append(FrontPoint(s, loss, frac, int(gen)))
    return pts


_START_OVER = "start the search over: delete the file (or the whole folder) or use another output folder"
_MEMO = {"memo.key": np.uint8, "memo.loss": np.float64, "memo.compute_fraction": np.float64,
         "memo.generation": np.int64}
_NSGA = {"nsga.X": np.bool_, "nsga.F": np.float64, **{f"nsga.{k}": dt for k, dt in _POP_DATA.items()}}


def _legacy_message(path: Path) -> str:
    return (f"{path}: a search checkpoint in the old pickle format. comfyui-ecad no longer reads pickles "
            f"(loading one can run arbitrary code), so this search cannot be resumed; {_START_OVER}")


def _refuse_legacy(out: Path) -> None:
    """An old pickle checkpoint in the folder stops the search before anything reads it."""
    for name in LEGACY_CHECKPOINT_FILES:
        if os.path.lexists(out / name):
            raise CheckpointError(_legacy_message(out / name))


def _save_checkpoint(path: Path, state: _State, settings: SearchSettings, fp: str, ident: dict,
                     space: GenomeSpace) -> None:
    from safetensors.numpy import save as save_tensors

    klen = (space.length + 7) // 8
    memo = list(state.memo.items())
    tensors = {
        "memo.key": np.frombuffer(b"".join(k for k, _ in memo), np.uint8).reshape(len(memo), klen),
        "memo.loss": np.array([v[0] for _, v in memo], np.float64),
        "memo.compute_fraction": np.array([v[1] for _, v in memo], np.float64),
        "memo.generation": np.array([v[2] for _, v in memo], np.int64),
    }
    nsga = None
    if state.algo is not None:
        tensors.update({name: state.algo[name[5:]] for name in _NSGA})
        nsga = {"n_iter": state.algo["algorithm_n_iter"], "rng": state.algo["rng"]}
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "pymoo": _pymoo_version(),
            "numpy": np.__version__, "fingerprint": fp, "ident": ident, "settings": settings.to_json(),
            "next_gen": state.next_gen, "history": state.history, "seed_keys": [k.hex() for k in state.seed_keys],
            "elapsed_s": state.elapsed_s, "nsga": nsga}
    data = save_tensors(tensors, metadata={_META_KEY: json.dumps(meta, default=str)})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    for name in LEGACY_CHECKPOINT_FILES:  # started over (resume off): the new checkpoint supersedes it
        (path.parent / name).unlink(missing_ok=True)


class _Damaged(Exception):
    pass


def _load_checkpoint(path: Path, fp: str, ident: dict, space: GenomeSpace) -> _State:
    """The checkpoint's state; CheckpointError naming ``path`` for anything unusable. Reads data only."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the search checkpoint ({e})") from None
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle's protocol header
        raise CheckpointError(_legacy_message(path))
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            text = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - whatever the parser says about a damaged file
        raise CheckpointError(f"{path}: not a readable search checkpoint ({type(e).__name__}: {e}); "
                              f"{_START_OVER}") from None
    try:
        d = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested beyond Python's stack
        raise CheckpointError(f"{path}: damaged search checkpoint (its JSON part: {e}); {_START_OVER}") from None
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a comfyui-ecad search checkpoint; {_START_OVER}")
    if d.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {d.get('version')!r}; this build reads "
                              f"{CHECKPOINT_VERSION}; {_START_OVER}")
    if d.get("pymoo") != _pymoo_version():
        raise CheckpointError(f"{path}: written with pymoo {d.get('pymoo')}, this is pymoo {_pymoo_version()}; "
                              "resume with the same pymoo version or use another output folder")
    if d.get("fingerprint") != fp:
        old = d.get("ident") if isinstance(d.get("ident"), dict) else {}
        ident = json.loads(json.dumps(ident, default=str))  # compared as it was stored
        diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        detail = ""
        if "settings" in diff and isinstance(old.get("settings"), dict):
            so, sn = old["settings"], ident.get("settings", {})
            detail = "; settings: " + ", ".join(f"{k} {so.get(k)!r} -> {sn.get(k)!r}"
                                                 for k in sorted(set(so) | set(sn)) if so.get(k) != sn.get(k))
        raise CheckpointError(f"{path}: this folder holds a search with other settings (differs in "
                              f"{', '.join(diff) or 'details'}{detail}); use another output folder, or delete "
                              "the checkpoint to start over")
    if d.get("numpy") != np.__version__:
        log.warning("ECAD search: %s was written with numpy %s, this is numpy %s: the resumed search may draw "
                    "other offspring than an uninterrupted one", path, d.get("numpy"), np.__version__)
    try:
        return _parse_state(d, tensors, space)
    except _Damaged as e:
        raise CheckpointError(f"{path}: damaged search checkpoint ({e}); {_START_OVER}") from None
    except Exception as e:  # noqa: BLE001 - a check above missed something: still the file's fault
        raise CheckpointError(f"{path}: damaged search checkpoint ({type(e).__name__}: {e}); "
                              f"{_START_OVER}") from None


def _parse_state(d: dict, t: dict, space: GenomeSpace) -> _State:
    """Type and shape checks of everything the resumed search will use."""
    def need(ok, what):
        if not ok:
            raise _Damaged(what)

    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def array(name, dtype, shape):  # shape: None for any length on that axis
        a = t.get(name)
        need(isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim == len(shape)
             and all(w is None or w == n for w, n in zip(shape, a.shape)),
             f"{name}: want {np.dtype(dtype).name} {shape}, got "
             f"{f'{a.dtype} {a.shape}' if isinstance(a, np.ndarray) else 'nothing'}")
        return a

    st = _State()
    st.next_gen = d.get("next_gen")
    need(integer(st.next_gen) and st.next_gen >= 0, f"next_gen {st.next_gen!r}")
    st.history = d.get("history")
    need(isinstance(st.history, list) and len(st.history) == st.next_gen
         and all(isinstance(h, dict) for h in st.history), "history: want one record per completed generation")
    st.elapsed_s = d.get("elapsed_s")
    need(isinstance(st.elapsed_s, (int, float)) and not isinstance(st.elapsed_s, bool)
         and math.isfinite(st.elapsed_s) and st.elapsed_s >= 0, f"elapsed_s {st.elapsed_s!r}")
    st.elapsed_s = float(st.elapsed_s)
    klen = (space.length + 7) // 8
    seeds = d.get("seed_keys")
    need(isinstance(seeds, list) and all(isinstance(k, str) and len(k) == 2 * klen for k in seeds),
         f"seed_keys: want hex strings of {klen} bytes")
    try:
        st.seed_keys = [bytes.fromhex(k) for k in seeds]
    except ValueError as e:
        raise _Damaged(f"seed_keys: {e}") from None

    want = set(_MEMO) | (set(_NSGA) if st.next_gen > 0 else set())
    need(set(t) == want, f"arrays {sorted(set(t) ^ want)} missing or unexpected")
    key = array("memo.key", np.uint8, (None, klen))
    n = key.shape[0]
    loss = array("memo.loss", np.float64, (n,))
    frac = array("memo.compute_fraction", np.float64, (n,))
    gen = array("memo.generation", np.int64, (n,))
    need(not np.isnan(loss).any(), "memo.loss: NaN")
    need((np.isfinite(frac) & (frac > 0) & (frac <= 1)).all(), "memo.compute_fraction: want values in (0, 1]")
    need(((gen >= 0) & (gen <= st.next_gen)).all(), "memo.generation: out of range")
    # the padding bits of a key are zero, or the same genome would have two keys
    need(np.array_equal(np.packbits(np.unpackbits(key, axis=1, count=space.length), axis=1), key),
         "memo.key: padding bits set")
    keys = [row.tobytes() for row in key]
    need(len(set(keys)) == n, "memo.key: a genome listed twice")
    st.memo = {k: [float(lo), float(fr), int(g)] for k, lo, fr, g in zip(keys, loss, frac, gen)}

    nsga = d.get("nsga")
    if st.next_gen == 0:
        need(nsga is None, "nsga: state before the first generation ended")
        return st
    need(isinstance(nsga, dict) and integer(nsga.get("n_iter")) and nsga["n_iter"] == st.next_gen + 1,
         "nsga.n_iter: want the generation count + 1")
    rng = nsga.get("rng")
    need(isinstance(rng, dict) and rng.get("bit_generator") == "PCG64", "nsga.rng: want a PCG64 state")
    try:
        np.random.PCG64().state = rng  # numpy checks every field; a throw-away generator
    except (TypeError, ValueError, KeyError) as e:
        raise _Damaged(f"nsga.rng: {e}") from None
    X = array("nsga.X", np.bool_, (None, space.length))
    p = X.shape[0]
    need(p >= 1 and (X.view(np.uint8) <= 1).all(), "nsga.X: want a population of 0/1 genomes")
    F = array("nsga.F", np.float64, (p, 2))
    need(np.isfinite(F).all(), "nsga.F: not finite")
    snap = {"X": X, "F": F, "algorithm_n_iter": nsga["n_iter"], "rng": rng}
    for k, dt in _POP_DATA.items():
        snap[k] = array(f"nsga.{k}", dt, (p,))
    need((snap["rank"] >= 0).all() and not np.isnan(snap["crowding"]).any()
         and (snap["n_gen"] >= 1).all() and (snap["n_iter"] >= 1).all(), "nsga: rank/crowding/n_gen out of range")
    st.algo = snap
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
