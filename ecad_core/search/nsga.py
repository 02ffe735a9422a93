"""NSGA-II over cache-schedule genomes, one generation at a time, with checkpoints: the search loop.

The pieces, in pymoo's vocabulary: the problem and its genomes (``problem.py``),
the initial population (``sampling.py``), crossover / mutation / duplicate
elimination (``operators.py``), when to stop (``termination.py``), progress and
history (``callbacks.py``) and persistence (``checkpoint.py``). Two objectives
are minimised: (1) the evaluator's quality loss, (2) the fraction of
full-compute cost (``ecad_core.costs``).

The loop runs generation by generation (pymoo ``ask``/``tell``). Generation 0
is the initial population; ``generations`` counts the evolved generations after
it. A genome is never evaluated twice: every result goes into a memo keyed by
the genome's packed bits, and the memo is part of the checkpoint.

After every generation the checkpoint is rewritten. A search started again on
the same folder with the same settings rebuilds NSGA-II from the saved
population and generator state and resumes (``generations`` and
``time_budget_s`` may differ); it ends with exactly the front an uninterrupted
run would have found. Cancelling mid-generation keeps the results evaluated so
far in the memo; the resumed run redoes that generation from the checkpoint, so
it draws the same offspring and finds them in the memo.

The search draws random numbers only from NSGA-II's own ``np.random.Generator``
(pymoo's per-algorithm ``random_state``, seeded by ``SearchSettings.seed``) and
the seeded generator of ``sampling.py``: numpy's and Python's global random
states are never read or changed.

The front (``front.py``) is the non-dominated set of *all* evaluated genomes
(an archive), so it never gets worse from one generation to the next. With
racing (``racing.py``, ``SearchSettings.racing``) a candidate may be stopped
after a few calibration samples: it is ranked by its partial loss but never
enters the front or the hypervolume.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..costs.compute import ComputeCost, uniform_cost
from ..errors import CheckpointError, EvaluationError, SearchSettingsError
from ..schedule import Layout, Schedule
from . import checkpoint as ckpt_io
from .callbacks import SearchCallback, history_record
from .checkpoint import CHECKPOINT_FILE, EVALUATIONS_FILE, START_OVER, SearchState
from .evaluate import Evaluator, Progress, fingerprint
from .front import FrontPoint, hypervolume, pareto_indices, write_front
from .operators import make_algorithm
from .problem import HAVE_PYMOO, GenomeSpace, genome_key, tell
from .racing import RACING_FILE, RaceState, can_bound, race_indices, raced_out
from .sampling import initial_population, load_warm_start
from .sensitivity import check_changes, probe_seeds
from .surrogate import screen
from .termination import CANCELLED, CONVERGED, Termination

log = logging.getLogger("ecad.search")

FRONT_DIR = "front"
# what NSGA-II sees for a schedule whose outputs were not finite (NaN/inf)
BAD_LOSS = 1e6


@dataclass
class SearchSettings:
    """Settings of one search. All but ``generations`` and ``time_budget_s`` must match on resume."""

    population: int = 24
    generations: int | None = 10  # evolved generations after generation 0 (the seeds)
    time_budget_s: float | None = None  # wall clock of this call; a started generation finishes
    seed: int = 0
    crossover_points: int = 4
    crossover_prob: float = 0.9
    mutation_prob: float | None = None  # per-bit flip probability; None: from mutation_flips
    # bits flipped per child on average (2 / genome length per bit) when mutation_prob is None and the search
    # starts from the probe's rows (probe_seeds): their children are refined, not scattered. Otherwise, or None:
    # ECAD's 1 / units per step (the default before; searches started then resume with it)
    mutation_flips: float | None = 2.0
    # the surrogate also learns from the probe's per-unit errors when the search has the table (surrogate.py)
    probe_features: bool = True
    heuristic_seeds: bool = True  # add sampling.py's heuristics to the initial population
    quality_scale: float = 1.0  # loss scale for the hypervolume (reference point (1, 1))
    # surrogate pre-screening (surrogate.py): breed screening x evaluated offspring, evaluate the promising ones
    screening: int = 0  # 0: off (every offspring is evaluated)
    evaluated_per_generation: int | None = None  # new genomes sent to the model per generation; None: population
    exploration: float = 0.25  # share of them picked at random instead of by the surrogate
    # racing over calibration samples (racing.py): run this many samples first, finish only hopeful candidates
    racing: int = 0  # 0: off (every candidate runs every sample)
    racing_margin: float = 0.1  # the optimistic bound is shrunk by this share (larger: fewer raced out)
    # schedules from the unit probe (sensitivity.py) first in the initial population; needs ``unit_changes``
    probe_seeds: int = 0  # 0: off

    RESUME_FREE = ("generations", "time_budget_s")
    # added after checkpoints existed: left out of the resume key at their defaults, so those still resume
    LATER: ClassVar[dict] = {
        "screening": 0,
        "evaluated_per_generation": None,
        "exploration": 0.25,
        "racing": 0,
        "racing_margin": 0.1,
        "probe_seeds": 0,
        "mutation_flips": None,
        "probe_features": False,
    }

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
            if (
                isinstance(self.time_budget_s, bool)
                or not isinstance(self.time_budget_s, (int, float))
                or not math.isfinite(self.time_budget_s)
                or self.time_budget_s <= 0
            ):
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
        if (
            isinstance(self.quality_scale, bool)
            or not isinstance(self.quality_scale, (int, float))
            or not self.quality_scale > 0
            or not math.isfinite(self.quality_scale)
        ):
            bad(f"quality scale must be a positive number, got {self.quality_scale!r}")
        if not is_int(self.screening) or self.screening < 0:
            bad(f"screening (offspring bred per evaluated one) must be an integer >= 0, got {self.screening!r}")
        if self.evaluated_per_generation is not None and (
            not is_int(self.evaluated_per_generation) or self.evaluated_per_generation < 1
        ):
            bad(f"evaluated per generation must be an integer >= 1, got {self.evaluated_per_generation!r}")
        if not _prob(self.exploration):
            bad(f"exploration must be a share in [0, 1], got {self.exploration!r}")
        if not is_int(self.racing) or self.racing < 0:
            bad(f"racing (samples run first) must be an integer >= 0, got {self.racing!r}")
        if not _prob(self.racing_margin) or self.racing_margin == 1:
            bad(f"racing margin must be a share in [0, 1), got {self.racing_margin!r}")
        if not is_int(self.probe_seeds) or self.probe_seeds < 0:
            bad(f"probe seeds must be an integer >= 0, got {self.probe_seeds!r}")
        if not isinstance(self.probe_features, bool):
            bad(f"probe features must be true or false, got {self.probe_features!r}")
        if self.mutation_flips is not None and (
            isinstance(self.mutation_flips, bool)
            or not isinstance(self.mutation_flips, (int, float))
            or not math.isfinite(self.mutation_flips)
            or self.mutation_flips <= 0
        ):
            bad(f"mutation flips (bits flipped per child) must be a positive number, got {self.mutation_flips!r}")

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def resume_key(self) -> dict:
        return {
            k: v
            for k, v in self.to_json().items()
            if k not in self.RESUME_FREE and not (k in self.LATER and self.LATER[k] == v)
        }

    def per_generation(self) -> int:
        """New genomes evaluated per evolved generation (at most)."""
        return int(self.evaluated_per_generation or self.population)

    def bit_prob(self, space: GenomeSpace) -> float:
        if self.mutation_prob is not None:
            return float(self.mutation_prob)
        if self.mutation_flips is not None and self.probe_seeds:
            return min(1.0, float(self.mutation_flips) / space.length)
        return 1.0 / space.n_units


def _prob(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v <= 1.0


@dataclass
class SearchResult:
    front: list[FrontPoint]
    generation: int  # last completed generation (0 = the initial population)
    evaluations: int  # distinct genomes evaluated (this run and resumed ones)
    stopped: str  # "generations" | "time_budget" | "cancelled" | "converged"
    hypervolume: float
    history: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    front_dir: Path | None = None
    checkpoint: Path | None = None
    resumed_from: int | None = None  # generation of the checkpoint this run resumed from
    archive: np.ndarray | None = None  # [n, 2] objectives of every fully evaluated genome, in evaluation order
    images: int | None = None  # calibration samples sampled by this call's evaluations (None: not counted)
    raced_out: int = 0  # genomes stopped by racing after part of their samples (never on the front)


class SearchRun:
    """One call of ``run_search``: the prepared search (settings checked, initial population, identity and
    checkpoint state) and its loop. ``run()`` searches until the termination says stop."""

    def __init__(
        self,
        evaluator: Evaluator,
        layout: Layout,
        steps: int,
        out_dir: str | Path | None,
        settings: SearchSettings | None = None,
        *,
        cost: ComputeCost | None = None,
        warm_start: Sequence = (),
        warm_start_steps: str = "refuse",
        model: str | None = None,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        resume: bool = True,
        write_files: bool = True,
        save_as: Callable[[Schedule], Schedule] | None = None,
        unit_changes: np.ndarray | None = None,
    ):
        if not HAVE_PYMOO:
            raise SearchSettingsError("the schedule search needs the 'pymoo' package (pip install pymoo)")
        settings = settings or SearchSettings()
        settings.validate()
        if resume and out_dir is not None:
            settings = _as_started(settings, Path(out_dir) / CHECKPOINT_FILE)
        if not hasattr(evaluator, "evaluate") or not callable(evaluator.evaluate):
            raise SearchSettingsError("evaluator must have an evaluate(schedules) -> losses method")
        self.evaluator, self.settings, self.model, self.write_files = evaluator, settings, model, write_files
        self.save_as = save_as  # the front's schedules as saved (a stage's search: the whole trajectory's)
        self.space = space = GenomeSpace(layout, steps)
        self.cost = cost = cost or uniform_cost(layout, space.steps)
        if cost.unit.shape != (space.steps, layout.n_units):
            raise SearchSettingsError(
                f"the cost table is for {cost.unit.shape[0]} steps x {cost.unit.shape[1]} "
                f"units, the search for {space.steps} x {layout.n_units}"
            )
        self.out = out = Path(out_dir) if out_dir is not None else None
        warm = load_warm_start(warm_start, space, warm_start_steps)
        probe: list[Schedule] = []
        # the probe's table also gives the surrogate its per-unit error features (surrogate.probe_features)
        use = unit_changes is not None and (settings.screening or settings.probe_seeds)
        self.unit_changes = check_changes(unit_changes, space) if use else None
        if settings.probe_seeds:
            if unit_changes is None:
                raise SearchSettingsError(
                    "probe seeds need the unit probe's table (unit_changes=, from "
                    "ecad_core.engine.probe.record_unit_changes on the search's generate function)"
                )
            probe = probe_seeds(space, unit_changes, settings.probe_seeds)
        pop0 = initial_population(
            space,
            settings.population,
            seed=settings.seed,
            warm_start=warm,
            heuristics=settings.heuristic_seeds,
            probe=probe,
        )
        describe_fn = getattr(evaluator, "describe", None)  # optional parts of the Evaluator protocol
        describe = describe_fn() if callable(describe_fn) else {}
        self.describe: dict[str, Any] = describe
        self.ident = {
            "settings": settings.resume_key(),
            "layout": [layout.family, layout.to_json()],
            "steps": space.steps,
            "cost": cost.describe(),
            "evaluator": describe,
            "initial_population": fingerprint([genome_key(space.encode(s)).hex() for s in pop0]),
        }
        self.fp = fingerprint(self.ident)
        self.ckpt = out / CHECKPOINT_FILE if out is not None else None
        self.termination = Termination(settings.generations, settings.time_budget_s, should_stop)
        self.callback = SearchCallback(progress)
        self.progress = progress

        state = self._load(resume)
        self.resumed_from = state.next_gen - 1 if state is not None else None
        X0 = np.stack([space.encode(s) for s in pop0])
        self.algorithm = make_algorithm(settings, space, X0)
        if state is None:
            state = SearchState()
            state.seed_keys = [genome_key(x) for x in X0]
        elif state.algo is not None:
            try:
                ckpt_io.restore(self.algorithm, state.algo)
            except Exception as e:  # noqa: BLE001 - data that passed the checks but pymoo cannot take
                raise CheckpointError(
                    f"{self.ckpt}: cannot rebuild the search from this checkpoint ({e}); {START_OVER}"
                ) from None
        self.state = state
        self.race = RaceState()
        if settings.racing:
            if not callable(getattr(evaluator, "evaluate_samples", None)):
                raise SearchSettingsError(
                    "racing needs an evaluator that scores a subset of the calibration samples "
                    "(evaluate_samples, as LocalEvaluator has); turn racing off"
                )
            if self.out is not None and self.resumed_from is not None:
                self.race = RaceState.load(self.out / RACING_FILE, state.memo)
        self.seed_names = {genome_key(space.encode(s)): s for s in pop0}
        self._elapsed0 = state.elapsed_s
        self._images0: int | None = None

    def _load(self, resume: bool) -> SearchState | None:
        if not resume or self.out is None or self.ckpt is None:
            return None
        ckpt_io.refuse_legacy(self.out)
        if not os.path.lexists(self.ckpt):
            return None
        if not self.ckpt.is_file():  # a folder or a FIFO: never read (a FIFO would block)
            raise CheckpointError(f"{self.ckpt}: not a regular file; {START_OVER}")
        return ckpt_io.load_checkpoint(self.ckpt, self.fp, self.ident, self.space)

    def save(self) -> None:
        """The checkpoint of everything so far (the wall clock over all sessions included)."""
        self.state.elapsed_s = self._elapsed0 + self.termination.elapsed()
        if self.ckpt is not None and self.settings.racing and self.out is not None:
            self.race.save(self.out / RACING_FILE)  # first: it must cover every genome the checkpoint holds
        if self.ckpt is not None:
            ckpt_io.save_checkpoint(self.ckpt, self.state, self.settings, self.fp, self.ident, self.space)

    def run(self) -> SearchResult:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        prepare = getattr(self.evaluator, "prepare", None)
        if callable(prepare):
            prepare(self.out, self.fp, self.progress)
        self._images0 = getattr(self.evaluator, "n_images", None)
        self.termination.start()
        while True:
            g = self.state.next_gen
            stopped = self.termination.before_generation(g)
            if stopped is not None:
                break
            stopped = self.generation(g)
            if stopped is not None:
                break
        return self.finish(stopped)

    def generation(self, g: int) -> str | None:
        """Ask NSGA-II for generation ``g``, evaluate its new genomes, tell the objectives; None when it ran to
        its end, else why the search stops (converged, cancelled inside it)."""
        state = self.state
        pop = self.algorithm.ask()
        if pop is None or len(pop) == 0:
            return CONVERGED
        X = np.asarray(pop.get("X")).astype(bool)
        keys = [genome_key(x) for x in X]
        if g > 0 and self.settings.screening:
            sel = self._screen(g, X, keys)
            pop, X, keys = pop[sel], X[sel], [keys[i] for i in sel]
        new, seen = [], set()
        for k, x in zip(keys, X):
            if k not in state.memo and k not in seen:
                seen.add(k)
                new.append((k, x))
        if not self._evaluate(g, new):
            self.save()  # the last generation's algorithm state + everything evaluated so far
            return CANCELLED

        F = np.array([[min(state.memo[k][0], BAD_LOSS), state.memo[k][1]] for k in keys], np.float64)
        tell(self.algorithm, pop, F)
        self.algorithm.tell(infills=pop)
        state.algo = ckpt_io.snapshot(self.algorithm)
        state.next_gen = g + 1
        record = history_record(
            g,
            keys,
            state.memo,
            _archive(state, self.race.raced),
            self.settings.quality_scale,
            self._elapsed0 + self.termination.elapsed(),
        )
        if self.settings.racing:
            record["raced_out"] = sum(1 for v in self.race.raced.values() if v[2] == g)
            record["images_total"] = self.race.images
        state.history.append(record)
        self.save()
        if self.out is not None:
            ckpt_io.write_progress(self.out, state, self.settings)
        self.callback.generation_done(record, self.termination.total_generations())
        return None

    def _screen(self, g: int, X: np.ndarray, keys: list) -> list[int]:
        """The offspring to evaluate and tell: those evaluated in earlier generations (free) and the ones the
        surrogate picks (plus random exploration) among the rest. It sees only the earlier generations, so a
        generation redone after a cancel (part of it in the memo) picks what the uninterrupted one picked."""
        space = self.space
        memo = {k: v for k, v in self.state.memo.items() if v[2] < g}
        free = [i for i, k in enumerate(keys) if k in memo]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in memo:
                first.setdefault(k, i)
        cand = list(first.values())
        if not cand:
            return free
        known = list(memo)
        picks = screen(
            space,
            X[cand],
            np.array([self.cost.fraction(space.bits(X[i])) for i in cand]),
            np.stack([space.from_key(k) for k in known]),
            np.array([memo[k][:2] for k in known], np.float64),
            self.settings.per_generation(),
            self.settings.exploration,
            self.settings.quality_scale,
            self.algorithm.random_state,
            changes=self.unit_changes if self.settings.probe_features else None,
        )
        return sorted(free + [cand[j] for j in picks])

    def _evaluate(self, g: int, new: list) -> bool:
        """Evaluate the ``new`` (key, genome) pairs into the memo, ``batch_size`` per call; False if cancelled."""
        state, space = self.state, self.space
        # all-recompute is the reference run itself: its loss is 0 by definition, so it never costs a run
        for k, x in new:
            if x.all():
                state.memo[k] = [0.0, self.cost.fraction(space.bits(x)), g]
        new = [(k, x) for k, x in new if not x.all()]
        batch = getattr(self.evaluator, "batch_size", None)
        step = len(new) if not batch else int(batch)
        done = 0
        self.callback.evaluating(0, len(new))
        try:
            for i in range(0, len(new), max(step, 1)):
                if self.termination.cancelled():
                    return False
                chunk = new[i : i + step]
                scheds = []
                for j, (k, x) in enumerate(chunk):
                    origin = self.seed_names.get(k)
                    name = origin.name if (g == 0 and origin is not None) else f"gen{g:03d}-{done + j:03d}"
                    scheds.append(space.decode(x, name=name, model=self.model))
                if self.settings.racing:
                    self._race(g, [k for k, _x in chunk], scheds)
                    done += len(chunk)
                    self.callback.evaluating(done, len(new))
                    continue
                losses = self.evaluator.evaluate(scheds)
                losses = list(losses) if losses is not None else []
                if len(losses) != len(scheds):
                    raise EvaluationError(
                        f"the evaluator returned {len(losses)} loss(es) for {len(scheds)} schedule(s)"
                    )
                for (k, _x), s, loss in zip(chunk, scheds, losses):
                    loss = float(loss)
                    if math.isnan(loss):
                        loss = math.inf
                    state.memo[k] = [loss, self.cost.fraction(s.bits), g]
                done += len(chunk)
                self.callback.evaluating(done, len(new))
        except BaseException:
            # an error or an interrupt (Ctrl-C, ComfyUI's cancel) inside an evaluation: keep what
            # was evaluated; a resume redoes this generation and finds those results in the memo
            if done:
                self.save()
            raise
        return True

    def _race(self, g: int, keys: list[bytes], scheds: list[Schedule]) -> None:
        """Racing (racing.py): the race samples first, the rest only for candidates that can still reach the
        front as it stood after the earlier generations."""
        state, race = self.state, self.race
        ev: Any = self.evaluator  # has evaluate_samples / n_samples (checked in __init__)
        n = int(ev.n_samples)
        first = race_indices(n, self.settings.racing)
        rest = [i for i in range(n) if i not in set(first)]
        fracs = np.array([self.cost.fraction(s.bits) for s in scheds])
        pairs = [(v[0], v[1]) for v in race.pairs.values() if v[2] < g]
        racing_now = g > 0 and bool(rest) and can_bound(pairs)
        if not racing_now:  # nothing can be raced out yet: one run of every sample
            per_all = ev.evaluate_samples(scheds, list(range(n)))
            partial = [[p[i] for i in first] for p in per_all]
        else:
            partial = ev.evaluate_samples(scheds, first)
            per_all = [None] * len(scheds)
        race.images += len(scheds) * len(first) if racing_now else len(scheds) * n
        means = np.array([_mean(p) for p in partial])
        out = np.zeros(len(scheds), bool)
        if racing_now:
            full = np.array(
                [[v[0], v[1]] for k, v in state.memo.items() if v[2] < g and k not in race.raced], np.float64
            ).reshape(-1, 2)
            out = raced_out(means, fracs, full, pairs, self.settings.racing_margin)
            go = [j for j in range(len(scheds)) if not out[j]]
            if go:
                more = ev.evaluate_samples([scheds[j] for j in go], rest)
                race.images += len(go) * len(rest)
                for j, m in zip(go, more):
                    per = [0.0] * n
                    for i, v in zip(first, partial[j]):
                        per[i] = v
                    for i, v in zip(rest, m):
                        per[i] = v
                    per_all[j] = per
        for j, k in enumerate(keys):
            if out[j]:
                loss = float(means[j])
                race.raced[k] = [loss, len(first), g]
            else:
                loss = _mean(per_all[j])
                race.pairs[k] = [float(means[j]), loss, g]
            state.memo[k] = [loss if not math.isnan(loss) else math.inf, float(fracs[j]), g]

    def finish(self, stopped: str) -> SearchResult:
        """The front of everything evaluated, written with progress.json and evaluations.csv."""
        state, space, settings, out = self.state, self.space, self.settings, self.out
        layout, cost, describe, model = space.layout, self.cost, self.describe, self.model
        front = _front(state, space, settings, cost, describe, model, self.seed_names, self.race.raced)
        if self.save_as is not None:
            front = [dataclasses.replace(p, schedule=self.save_as(p.schedule)) for p in front]
        allF = _archive(state, self.race.raced)
        hv = hypervolume(allF, quality_scale=settings.quality_scale) if len(allF) else 0.0
        front_dir = None
        if out is not None and self.write_files:
            ckpt_io.write_progress(out, state, settings, stopped)
            ckpt_io.write_evaluations(out / EVALUATIONS_FILE, state)
            seedF = np.array([[state.memo[k][0], state.memo[k][1]] for k in state.seed_keys if k in state.memo])
            title = (
                f"{model or layout.family}: {space.steps} steps, gen {state.next_gen - 1}, "
                f"{len(state.memo)} evaluated, HV {hv:.4f}"
            )
            info = {
                "settings": settings.to_json(),
                "steps": space.steps,
                "layout": layout.describe(),
                "model": model,
                "cost": cost.describe(),
                "evaluator": describe,
                "quality_metric": describe.get("metric"),
                "generation": state.next_gen - 1,
                "evaluations": len(state.memo),
                "hypervolume": hv,
                "stopped": stopped,
                "title": title,
            }
            front_dir = write_front(out / FRONT_DIR, front, info=info, all_objectives=allF, seed_objectives=seedF)
        ckpt = self.ckpt
        return SearchResult(
            front=front,
            generation=state.next_gen - 1,
            evaluations=len(state.memo),
            stopped=stopped,
            hypervolume=hv,
            history=list(state.history),
            out_dir=out,
            front_dir=front_dir,
            checkpoint=ckpt if ckpt is not None and ckpt.is_file() else None,
            resumed_from=self.resumed_from,
            archive=allF,
            images=(getattr(self.evaluator, "n_images", 0) - self._images0) if self._images0 is not None else None,
            raced_out=len(self.race.raced),
        )


def run_search(
    evaluator: Evaluator,
    layout: Layout,
    steps: int,
    out_dir: str | Path | None,
    settings: SearchSettings | None = None,
    **options: Any,
) -> SearchResult:
    """Search cache schedules for ``layout`` at ``steps`` steps; see the module docstring.

    ``evaluator``: anything with ``evaluate(list[Schedule]) -> list[float]``. The keyword ``options``
    (``SearchRun``'s, all optional):
    ``cost``: the compute objective (default: every unit costs the same).
    ``unit_changes``: the unit probe's table (``ecad_core.engine.probe.record_unit_changes``), needed when
    ``settings.probe_seeds`` > 0: its step rows go first into the initial population (``sensitivity.py``).
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
    return SearchRun(evaluator, layout, steps, out_dir, settings, **options).run()


# -- helpers -------------------------------------------------------------------------
def _archive(state: SearchState, raced: dict | None = None) -> np.ndarray:
    """Objectives of every fully evaluated genome (``raced``: keys raced out, left out)."""
    rows = [[v[0], v[1]] for k, v in state.memo.items() if not raced or k not in raced]
    return np.array(rows, np.float64).reshape(-1, 2)


# settings added with a new default: a checkpoint whose settings lack the key started with the value before
_BEFORE: dict[str, Any] = {"mutation_flips": None, "probe_features": False}


def _as_started(settings: SearchSettings, ckpt: Path) -> SearchSettings:
    """``settings`` as a search in ``ckpt`` started: one written before ``mutation_flips`` / ``probe_features``
    existed mutated one bit per step / screened on the raw features, and resumes so. Anything unreadable is left
    to the checkpoint loader."""
    if all(getattr(settings, k) == v for k, v in _BEFORE.items()) or not ckpt.is_file():
        return settings
    stored = ckpt_io.stored_settings(ckpt)
    if stored is None:
        return settings
    old = {k: v for k, v in _BEFORE.items() if k not in stored and getattr(settings, k) != v}
    if old:
        # not silent: a value asked for now (even today's default) gives way to how the search started
        log.warning(
            "ECAD search: %s was started before %s existed; it resumes as it started (%s). For today's settings, %s",
            ckpt.parent,
            " and ".join(old),
            ", ".join(f"{k}={v}" for k, v in old.items()),
            ckpt_io.START_OVER,
        )
    return dataclasses.replace(settings, **old)


def _mean(per) -> float:
    # as LocalEvaluator.evaluate: the float64 mean of the per-sample losses, so a finished race equals a full run
    return float(torch.tensor(per, dtype=torch.float64).mean())


def _compact_description(d: dict) -> dict:
    out = dict(d)
    if isinstance(out.get("prompts"), list):
        p = out["prompts"]
        out["prompts"] = {"count": len(p), "sha256_16": fingerprint(p), "first": p[0][:120] if p else None}
    return out


_INT64 = 2**63


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


def _front(
    state: SearchState,
    space: GenomeSpace,
    settings: SearchSettings,
    cost: ComputeCost,
    describe: dict,
    model: str | None,
    seed_names: dict,
    raced: dict | None = None,
) -> list[FrontPoint]:
    keys = [k for k in state.memo if not raced or k not in raced]
    F = _archive(state, raced)
    metric = describe.get("metric", "quality")
    prov_common = {"settings": settings.to_json(), "cost": cost.describe(), "evaluator": _compact_description(describe)}
    pts = []
    for i in pareto_indices(F):
        k = keys[i]
        loss, frac, gen = state.memo[k]
        origin = seed_names.get(k) if gen == 0 else None
        label = f"x{1.0 / frac:.2f}"
        name = f"ecad-search-{model or space.layout.family}-{label}"
        prov = {"search": {**prov_common, "generation": int(gen), "seed": settings.seed}}
        if origin is not None:
            prov["search"]["initial"] = origin.provenance.get("search_seed", {"kind": "seed"})
            prov["search"]["initial_name"] = origin.name
        metrics = {
            "quality_loss": loss,
            "quality_metric": metric,
            "compute_fraction": frac,
            "expected_speedup": 1.0 / frac,
            "compute_model": cost.source,
        }
        s = space.decode(space.from_key(k), name=name, model=model, provenance=_int64_safe(prov), metrics=metrics)
        pts.append(FrontPoint(s, loss, frac, int(gen)))
    return pts
