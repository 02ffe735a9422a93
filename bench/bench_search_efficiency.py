"""Search efficiency on the trained shapes models: hypervolume of the front against model runs, held-out losses,
and the rule-based caches (every-n, first-block residual, TeaCache-like) swept over their knob at equal MACs.

A *search variant* is a function ``variant(ctx: SearchContext) -> None`` that scores schedules only through
``ctx.evaluator.evaluate(schedules)`` (or ``evaluate_samples(schedules, indices)``, a subset of the calibration
samples) and stops at ``ctx.budget`` model runs, counted as images sampled / calibration samples (a run of every
sample = 1); the benchmark records the archive after every complete evaluation, so every variant gets the same
curves. Register one with ``@variant("name")`` (or pass
``variants={"name": fn}`` to ``run``) and name it with ``--variants``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m bench.bench_search_efficiency \
        --out bench/results/cpu-search-efficiency.json
    .venv/bin/python -m bench.bench_search_efficiency --quick   # a minute: the CI check of this file

Every run is also charged its projected H100 seconds at the paper's size (``h100_seconds``: 100 images, per-image
time linear in the schedule's MACs fraction through issue #19's two measured points); ``--h100-budget 3600`` stops
each search at one H100-hour, and each search records its HV within the hour and within the flat bound (1,068
runs at no-cache cost). ``--option KEY=VALUE`` sets a variant's option; ``--merge`` joins seeds run apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ecad_core.costs.compute import ComputeCost, cost_for_transformer
from ecad_core.diffusers.adapters import find_diffusers_units
from ecad_core.diffusers.api import apply
from ecad_core.engine import Step0Memo
from ecad_core.engine.probe import record_unit_changes
from ecad_core.schedule import Schedule
from ecad_core.search import GenomeSpace, LocalEvaluator, SearchSettings, hypervolume, pareto_indices, run_search
from ecad_core.search.sensitivity import default_probe_seeds

from . import trained
from .common import hardware, write_json
from .rule_caches import POLICIES, Policy

RESULTS = Path(__file__).resolve().parent / "results"

# -- projected H100 cost of a run at the paper's size (issue #19's measured per-image times) ----------------
# PixArt-α 256², batch 100 with CFG, H100 (issue #19): 33.7 ms per image without cache (MACs fraction 1) ...
H100_MS_NO_CACHE = 33.7
# ... and 14.2 ms with the fastest preset, schedules/pixart-alpha-256-fastest.json, whose MACs fraction is its
# 1.175355260928 T over no cache's 5.713796136960 T ("ecad" mode, exact: docs/cost-model.md) = 0.2057
H100_MS_FASTEST = 14.2
FASTEST_FRACTION = 1.175355260928 / 5.713796136960
PAPER_IMAGES = 100  # images per run of a paper-size search (100 prompts x 1 image)
H100_HOUR_S = 3600.0


def h100_seconds(fraction: float, images: float = PAPER_IMAGES) -> float:
    """Projected H100 seconds of one paper-size run of a schedule with MACs fraction ``fraction``: per-image time
    linear in the fraction through (FASTEST_FRACTION, 14.2 ms) and (1, 33.7 ms), the only two measured points
    (a fixed per-image part, launches and the rest, stays as the fraction falls)."""
    f = min(max(float(fraction), 0.0), 1.0)
    slope = (H100_MS_NO_CACHE - H100_MS_FASTEST) / (1.0 - FASTEST_FRACTION)
    return images * (H100_MS_FASTEST + slope * (f - FASTEST_FRACTION)) / 1000.0


# runs of a paper-size search in one H100-hour when every run is charged as no cache: the conservative bound
FLAT_BOUND_RUNS = int(H100_HOUR_S // h100_seconds(1.0))


# -- sampling the trained models -------------------------------------------------------------
class ShapesGenerate:
    """``generate(schedule_or_None)`` for ``LocalEvaluator`` on a trained shapes model: every prompt x seed in
    one batched Euler run. ``policy`` (a ``rule_caches.Policy``) drives the engine at run time instead of the
    schedule's rows; ``last_bits`` holds the realised bits of the last cached run.

    ``step0_memo`` (on by default: this is a search's generate): the cached runs share their step-0 model call
    (``ecad_core.engine.step0``; one step-0 output per unit per sample subset run, kept for this object's life);
    ``step0_shared`` counts the step-0 transformer calls served from it (a policy run never uses it: its hooks
    watch step 0)."""

    def __init__(
        self,
        model,
        family: str,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        *,
        step0_memo: bool = True,
    ):
        self.model, self.family, self.steps = model, family, steps
        self.step0_memo = Step0Memo() if step0_memo else None
        self.units = find_diffusers_units(model)
        self.captions = [p for p in prompts for _ in seeds]
        self.sample_seeds = [s for _ in prompts for s in seeds]
        self.sample_prompts = self.captions
        self.policy: Policy | None = None
        self.last_bits: np.ndarray | None = None
        self.description = {"model": f"shapes-{family}", "prompts": list(prompts), "seeds": list(seeds), "steps": steps}

    def __call__(self, schedule: Schedule | None, samples: Sequence[int] | None = None) -> list[torch.Tensor]:
        # samples: run only these (each sample's noise is its own seed's, so a subset gives the same outputs)
        idx = range(len(self.captions)) if samples is None else samples
        caps, seeds = [self.captions[i] for i in idx], [self.sample_seeds[i] for i in idx]
        if schedule is None:
            return list(trained.sample(self.model, self.family, caps, seeds, self.steps))
        handle = apply(self.model, schedule, step0_memo=self.step0_memo if self.policy is None else None)
        hooks = self.policy.install(handle, self.units) if self.policy is not None else []
        try:
            out = trained.sample(self.model, self.family, caps, seeds, self.steps)
            handle.finish_run()
        finally:
            for h in hooks:
                h.remove()
            handle.remove()
        if self.policy is not None:
            self.policy.finish()
            self.last_bits = self.policy.rows[-1]
        else:
            self.last_bits = schedule.effective_bits()
        return list(out)

    @property
    def step0_shared(self) -> int:
        """Step-0 transformer calls served from the memo (each one a transformer call saved)."""
        return self.step0_memo.shared if self.step0_memo is not None else 0


# -- the search variants -----------------------------------------------------------------------
class BudgetSpent(Exception):
    """Raised by the recording evaluator when a variant asks for more runs than its budget."""


@dataclass
class SearchContext:
    evaluator: RecordingEvaluator
    space: GenomeSpace
    cost: ComputeCost
    budget: int  # model runs (images sampled / calibration samples), the reference run included
    seed: int
    model: str
    options: dict = field(default_factory=dict)


Variant = Callable[[SearchContext], None]
VARIANTS: dict[str, Variant] = {}


def variant(name: str) -> Callable[[Variant], Variant]:
    def register(fn: Variant) -> Variant:
        VARIANTS[name] = fn
        return fn

    return register


@variant("nsga2")
def nsga2(ctx: SearchContext) -> None:
    """Today's search: ``run_search`` (NSGA-II, heuristic seeds), generations to fill the budget."""
    pop = int(ctx.options.get("population", 24))
    gens = max(1, (ctx.budget - 1 - pop) // pop)
    settings = SearchSettings(population=pop, generations=gens, seed=ctx.seed, **_mutation(ctx, ecad=True))
    run_search(ctx.evaluator, ctx.space.layout, ctx.space.steps, None, settings, cost=ctx.cost, model=ctx.model)


@variant("surrogate")
def surrogate(ctx: SearchContext) -> None:
    """NSGA-II with surrogate pre-screening (issue #19 B.2): ``screening`` x ``per_generation`` offspring bred per
    generation, the ``per_generation`` most promising (a quarter of them at random) evaluated."""
    pop = int(ctx.options.get("population", 24))
    per = int(ctx.options.get("per_generation", 8))
    settings = SearchSettings(
        population=pop,
        generations=max(1, (ctx.budget - pop) // per + 1),
        seed=ctx.seed,
        screening=int(ctx.options.get("screening", 8)),
        evaluated_per_generation=per,
        exploration=float(ctx.options.get("exploration", 0.25)),
        quality_scale=ctx.evaluator.quality_scale,
        **_mutation(ctx, ecad=True),
    )
    run_search(ctx.evaluator, ctx.space.layout, ctx.space.steps, None, settings, cost=ctx.cost, model=ctx.model)


@variant("racing")
def racing(ctx: SearchContext) -> None:
    """NSGA-II with racing over calibration samples (issue #19 B.3): each candidate of generation >= 1 runs
    ``racing`` samples first (default a quarter of them) and the rest only if it can still reach the front;
    generations until the budget (in images) is spent."""
    pop = int(ctx.options.get("population", 24))
    settings = SearchSettings(
        population=pop,
        generations=ctx.budget,  # the budget in images stops it
        seed=ctx.seed,
        racing=_racing(ctx),
        racing_margin=float(ctx.options.get("racing_margin", 0.1)),
        **_mutation(ctx, ecad=True),
    )
    run_search(ctx.evaluator, ctx.space.layout, ctx.space.steps, None, settings, cost=ctx.cost, model=ctx.model)


def _mutation(ctx: SearchContext, ecad: bool = False) -> dict:
    """The mutation settings: ``mutation_prob`` (per bit) if given, ``mutation_flips`` (bits per child; 0: ECAD's
    one bit per step), else the search's default (``ecad``: ECAD's, for the variants that stand for the search
    before the probe, so their earlier results still reproduce)."""
    out: dict = {}
    if ctx.options.get("mutation_prob") is not None:
        out["mutation_prob"] = float(ctx.options["mutation_prob"])
    if "mutation_flips" in ctx.options:
        out["mutation_flips"] = float(ctx.options["mutation_flips"]) or None
    elif ecad:
        out["mutation_flips"] = None
    return out


def _racing(ctx: SearchContext) -> int:
    """Samples a racing variant runs first: ``racing`` if given, else a quarter of the calibration samples."""
    return int(ctx.options.get("racing", max(1, ctx.evaluator.n_samples // 4)))


@variant("probe")
def probe(ctx: SearchContext) -> None:
    """NSGA-II whose initial population starts with the unit probe's step rows (``SearchSettings.probe_seeds``):
    one all-recompute run through the engine's unit probe (charged to the budget), then the search."""
    _probe_search(ctx, racing=0)


@variant("probe-racing")
def probe_racing(ctx: SearchContext) -> None:
    """``probe`` with racing over calibration samples (``racing``'s settings) in the evolved generations."""
    _probe_search(ctx, racing=_racing(ctx))


@variant("probe-surrogate")
def probe_surrogate(ctx: SearchContext) -> None:
    """``probe`` with surrogate pre-screening (``surrogate``'s settings) in the evolved generations."""
    per = int(ctx.options.get("per_generation", 8))
    _probe_search(ctx, racing=0, screening=int(ctx.options.get("screening", 8)), per_generation=per)


def _probe_search(ctx: SearchContext, racing: int, screening: int = 0, per_generation: int | None = None) -> None:
    pop = int(ctx.options.get("population", 24))
    changes = ctx.evaluator.probe(ctx.space)
    settings = SearchSettings(
        population=pop,
        generations=ctx.budget,  # the budget stops it
        seed=ctx.seed,
        probe_seeds=int(ctx.options.get("probe_seeds", default_probe_seeds(pop, ctx.space.steps))),
        racing=racing,
        racing_margin=float(ctx.options.get("racing_margin", 0.1)),
        screening=screening,
        evaluated_per_generation=per_generation,
        exploration=float(ctx.options.get("exploration", 0.25)),
        quality_scale=ctx.evaluator.quality_scale,
        **_mutation(ctx),
    )
    space = ctx.space
    run_search(
        ctx.evaluator, space.layout, space.steps, None, settings, cost=ctx.cost, model=ctx.model, unit_changes=changes
    )


class RecordingEvaluator:
    """Wraps a ``LocalEvaluator``: scores one schedule per call of the inner evaluator and records, after each
    complete evaluation, the model runs so far (images / calibration samples) and the archive's hypervolume (the
    curve); refuses to sample past the budget. A schedule run on a subset of the samples enters the archive only
    once all its samples have run."""

    def __init__(
        self,
        inner: LocalEvaluator,
        cost: ComputeCost,
        quality_scale: float,
        budget: int,
        h100_budget_s: float | None = None,
    ):
        self.inner, self.cost, self.quality_scale, self.budget = inner, cost, quality_scale, budget
        self.h100_budget_s = h100_budget_s
        self.batch_size = inner.batch_size
        self.archive: list[tuple[float, float]] = []
        self.schedules: list[Schedule] = []
        self.curve: list[tuple[float, float]] = []
        # projected H100 seconds at the paper's size (h100_seconds) and the HV against them; the shared reference
        # run is charged at no-cache cost, as in ``runs``
        self.h100_s = h100_seconds(1.0)
        self.curve_h100: list[tuple[float, float]] = []
        self._parts: dict[bytes, dict[int, float]] = {}
        self.probe_images = 0  # the unit probe's run (``probe``), charged like any other

    def probe(self, space: GenomeSpace) -> np.ndarray:
        """The unit probe's table on the calibration samples (one all-recompute run, counted in ``runs``)."""
        self._check(self.n_samples, 1.0)
        changes = record_unit_changes(self.inner.generate, space.layout, space.steps)
        self.probe_images += self.n_samples
        self.h100_s += h100_seconds(1.0)
        return changes

    def describe(self) -> dict:
        return self.inner.describe()

    def prepare(self, out_dir, fingerprint=None, progress=None) -> None:
        self.inner.prepare(out_dir, fingerprint, progress)

    @property
    def n_samples(self) -> int:
        return len(self.inner.references())

    @property
    def n_images(self) -> int:
        return self.inner.n_images + self.probe_images

    @property
    def runs(self) -> float:
        """Model runs: images sampled / calibration samples (the shared reference run counted once)."""
        n = self.n_samples
        r = self.n_images / n
        return int(r) if r == int(r) else round(r, 4)

    def _check(self, need: int, fraction: float) -> float:
        """The projected H100 seconds of sampling ``need`` samples at MACs ``fraction``; BudgetSpent past a
        budget."""
        self.inner.references()
        sec = h100_seconds(fraction) * need / self.n_samples
        if self.n_images + need > self.budget * self.n_samples:
            raise BudgetSpent
        if self.h100_budget_s is not None and self.h100_s + sec > self.h100_budget_s + 1e-9:
            raise BudgetSpent
        return sec

    def _record(self, s: Schedule, loss: float) -> None:
        self.archive.append((loss, self.cost.fraction(s.effective_bits())))
        self.schedules.append(s)
        hv = hypervolume(np.array(self.archive), quality_scale=self.quality_scale)
        self.curve.append((self.runs, hv))
        self.curve_h100.append((round(self.h100_s, 3), hv))

    def evaluate(self, schedules: list[Schedule]) -> list[float]:
        losses = []
        for s in schedules:
            sec = self._check(self.n_samples, self.cost.fraction(s.effective_bits()))
            loss = self.inner.evaluate([s])[0]
            self.h100_s += sec
            losses.append(loss)
            self._record(s, loss)
        return losses

    def evaluate_samples(self, schedules: list[Schedule], indices: Sequence[int]) -> list[list[float]]:
        out = []
        n = self.n_samples
        for s in schedules:
            sec = self._check(len(indices), self.cost.fraction(s.effective_bits()))
            per = self.inner.evaluate_samples([s], indices)[0]
            self.h100_s += sec
            out.append(per)
            key = s.bits.tobytes()
            part = self._parts.setdefault(key, {})
            part.update(zip(indices, per))
            if len(part) == n:
                del self._parts[key]
                self._record(s, float(torch.tensor([part[i] for i in range(n)], dtype=torch.float64).mean()))
        return out

    def front(self) -> list[int]:
        return [int(i) for i in pareto_indices(np.array(self.archive))] if self.archive else []


# -- the benchmark ------------------------------------------------------------------------------
@dataclass
class Setup:
    steps: int = 20
    seeds_cal: tuple[int, ...] = (0,)
    seeds_held: tuple[int, ...] = (100,)
    calibration: tuple[str, ...] = tuple(trained.CALIBRATION)
    held_out: tuple[str, ...] = tuple(trained.HELD_OUT)
    budget: int = 265  # today's default: population 24, 10 generations, plus the reference
    search_seeds: tuple[int, ...] = (0, 1, 2)
    every_n: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    fbcache: tuple[float, ...] = (0.02, 0.05, 0.08, 0.12, 0.18, 0.25, 0.35, 0.5)
    teacache: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.2)
    population: int = 24
    racing: int | None = None  # racing variant: samples run first (None: a quarter of them)
    h100_budget_s: float | None = None  # also stop a search at these projected H100 seconds (h100_seconds)
    options: dict = field(default_factory=dict)  # the variants' options (``--option``), e.g. screening=16


QUICK = Setup(
    steps=10,
    seeds_cal=(0,),
    seeds_held=(100,),
    calibration=tuple(trained.CALIBRATION[:2]),
    held_out=tuple(trained.HELD_OUT[:2]),
    budget=25,
    search_seeds=(0,),
    every_n=(2, 4),
    fbcache=(0.1, 0.3),
    teacache=(0.2, 0.6),
    population=8,
)


def calibration_set(n: int) -> tuple[str, ...]:
    """``n`` calibration captions: ``trained.CALIBRATION`` first, then others of the shapes caption space spread
    evenly over it (never a held-out one), so a larger set keeps the small one's prompts."""
    base = list(trained.CALIBRATION)
    if n <= len(base):
        return tuple(base[:n])
    pool = [c for c in trained.all_captions() if c not in base and c not in trained.HELD_OUT]
    m = n - len(base)
    if m > len(pool):
        raise ValueError(f"at most {len(base) + len(pool)} calibration captions, asked for {n}")
    return tuple(base + [pool[(i * len(pool)) // m] for i in range(m)])


def _front_at(points: list[tuple[float, float]], frac: float) -> float:
    """The lowest loss among ``points`` (loss, fraction) that cost at most ``frac``; inf if none."""
    ok = [loss for loss, f in points if f <= frac + 1e-9]
    return min(ok) if ok else math.inf


def bench_model(
    family: str,
    setup: Setup,
    variants: dict[str, Variant],
    log=print,
    partial: Callable[[dict], None] | None = None,
    baselines_from: dict | None = None,
) -> dict:
    """One model's result; ``partial(raw)`` gets the result so far after each search. ``baselines_from``: an
    earlier result of this model at the same setup, whose rule-based sweeps are taken instead of rerun (they are
    deterministic)."""
    model = trained.load(family)
    units = find_diffusers_units(model)
    layout, steps = units.layout, setup.steps
    side = trained.cost_size(family)
    cost = cost_for_transformer(model, layout, steps, side, side, text_tokens=trained.MAX_TOKENS)
    space = GenomeSpace(layout, steps)
    gen_cal = ShapesGenerate(model, family, setup.calibration, setup.seeds_cal, steps)
    gen_held = ShapesGenerate(model, family, setup.held_out, setup.seeds_held, steps)
    cal, held = LocalEvaluator(gen_cal), LocalEvaluator(gen_held)
    out: dict = {"family": family, "units": layout.n_units, "cost_model": cost.describe()}

    def run_time(gen, ev):
        t = time.perf_counter()
        ev.evaluate([Schedule.full(layout, steps)])
        return time.perf_counter() - t

    cal.references(), held.references()
    out["seconds_per_run"] = {
        "calibration": round(run_time(gen_cal, cal), 4),
        "held_out": round(run_time(gen_held, held), 4),
    }
    out["reference_match"] = {
        "calibration": trained.fraction_matching(torch.stack(cal.references()), gen_cal.captions),
        "held_out": trained.fraction_matching(torch.stack(held.references()), gen_held.captions),
    }

    # the rule-based caches, swept over their knob
    t0 = time.perf_counter()
    baselines: dict[str, list[dict]] = {}
    if baselines_from is not None:
        baselines = baselines_from["baselines"]
        out["baselines_from"] = baselines_from.get("source", "earlier result")
    for n in setup.every_n if baselines_from is None else ():
        s = Schedule.every_n(layout, steps, n)
        row = {"knob": n, "fraction": cost.fraction(s.effective_bits())}
        row["loss_cal"], row["loss_held"] = cal.evaluate([s])[0], held.evaluate([s])[0]
        row["fraction_cal"] = row["fraction_held"] = row["fraction"]
        baselines.setdefault("every-n", []).append(row)
    for kind, knobs in (("fbcache", setup.fbcache), ("teacache", setup.teacache)):
        for thr in knobs if baselines_from is None else ():
            row: dict = {"knob": thr}
            for gen, ev, tag in ((gen_cal, cal, "cal"), (gen_held, held, "held")):
                gen.policy = POLICIES[kind](thr)
                try:
                    row[f"loss_{tag}"] = ev.evaluate([Schedule.full(layout, steps)])[0]
                    row[f"fraction_{tag}"] = cost.fraction(gen.last_bits)
                finally:
                    gen.policy = None
            baselines.setdefault(kind, []).append(row)
    out["baselines"] = baselines
    out["baseline_seconds"] = round(time.perf_counter() - t0, 1)
    for kind, rows in baselines.items():
        log(
            f"{family} {kind}: "
            + ", ".join(f"{r['knob']}: x{1 / r['fraction_held']:.2f} {r['loss_held']:.4f}" for r in rows)
        )

    scale = _scales(baselines)["calibration"]

    out["variants"] = {}
    for vname, fn in variants.items():
        per_seed = []
        for seed in setup.search_seeds:
            t1 = time.perf_counter()
            runs0 = cal.n_generate - 1  # the reference is computed once and shared by every search
            images0 = cal.n_images - len(gen_cal.captions)
            rec = RecordingEvaluator(_Offset(cal, runs0, images0), cost, scale, setup.budget, setup.h100_budget_s)
            ctx = SearchContext(
                rec, space, cost, setup.budget, seed, f"shapes-{family}", {"population": setup.population}
            )
            if setup.racing:
                ctx.options["racing"] = setup.racing
            ctx.options.update(setup.options)
            try:
                fn(ctx)
            except BudgetSpent:
                pass
            front = rec.front()
            pts = []
            for i in front:
                loss_h = held.evaluate([rec.schedules[i]])[0]
                pts.append({"fraction": rec.archive[i][1], "loss_cal": rec.archive[i][0], "loss_held": loss_h})
            hv_final = rec.curve[-1][1] if rec.curve else 0.0
            curve = _thin(rec.curve)
            per_seed.append(
                {
                    "seed": seed,
                    "runs": rec.runs,
                    "images": rec.n_images,
                    "sampler_calls": rec.inner.n_generate,
                    "stopped_early": len(rec._parts),  # started on a subset, never finished (raced out)
                    "hv_final": hv_final,
                    "runs_to": {f"{p}%": _runs_to(rec.curve, p / 100 * hv_final) for p in (90, 95, 99)},
                    "curve": curve,
                    "h100_s": round(rec.h100_s, 1),
                    "hv_h100_hour": _hv_within(rec.curve_h100, H100_HOUR_S),
                    "hv_flat_bound": _hv_within(rec.curve, FLAT_BOUND_RUNS),
                    "curve_h100": _thin(rec.curve_h100, n=120, whole_until=0),
                    "front": sorted(pts, key=lambda p: p["fraction"]),
                    "seconds": round(time.perf_counter() - t1, 1),
                }
            )
            last = per_seed[-1]
            log(f"{family} {vname} seed {seed}: {rec.runs} runs, HV {hv_final:.4f}, {last['seconds']} s")
            out["variants"][vname] = {"seeds": per_seed}
            if partial is not None:
                partial(summarise(out))
    return summarise(out)


def _scales(baselines: dict) -> dict:
    """The hypervolumes' loss scales: 4 x every-2's loss on each prompt set, so the rule-based range fits in the
    (1, 1) box (held-out captions give larger losses than the calibration ones at the same schedule)."""
    every2 = next((r for r in baselines["every-n"] if r["knob"] == 2), baselines["every-n"][0])
    return {"calibration": max(4 * every2["loss_cal"], 1e-6), "held_out": max(4 * every2["loss_held"], 1e-6)}


def summarise(out: dict) -> dict:
    """Adds to a model's raw result: the loss scales, each front's held-out hypervolume, the medians over seeds,
    the baselines' held-out hypervolumes and the comparison at equal compute."""
    baselines = out["baselines"]
    scales = out["quality_scale"] = _scales(baselines)
    for v in out["variants"].values():
        for s in v["seeds"]:
            s["hv_held"] = _hv([(p["loss_held"], p["fraction"]) for p in s["front"]], scales["held_out"])
        seeds = v["seeds"]
        v["median_hv_final"] = statistics.median(s["hv_final"] for s in seeds)
        v["median_hv_held"] = statistics.median(s["hv_held"] for s in seeds)
        for k in ("hv_h100_hour", "hv_flat_bound"):
            if all(k in s for s in seeds):  # files from before the H100 accounting lack them
                v[f"median_{k}"] = statistics.median(s[k] for s in seeds)
        v["median_runs_to"] = {
            k: statistics.median(s["runs_to"][k] if s["runs_to"][k] is not None else math.inf for s in seeds)
            for k in seeds[0]["runs_to"]
        }
    for v in out["variants"].values():
        # runs each search needed to reach another variant's median final HV (from the stored curves: exact up to
        # 60 runs, then to the thinning; their 6 decimals), median over seeds; inf if not reached
        v["median_runs_to_final_of"] = {
            w: statistics.median(
                next((r for r, h in s["curve"] if h >= round(other["median_hv_final"], 6)), math.inf)
                for s in v["seeds"]
            )
            for w, other in out["variants"].items()
        }
    out["hv_cal_baselines"] = {
        k: _hv([(r["loss_cal"], r["fraction_cal"]) for r in rows], scales["calibration"])
        for k, rows in baselines.items()
    }
    out["hv_held_baselines"] = {
        k: _hv([(r["loss_held"], r["fraction_held"]) for r in rows], scales["held_out"])
        for k, rows in baselines.items()
    }
    out["comparison"] = _compare(out, baselines)
    return out


class _Offset:
    """A LocalEvaluator view whose ``n_generate`` counts from ``base`` (runs of earlier searches left out,
    the shared reference run kept: each search pays it once)."""

    def __init__(self, inner: LocalEvaluator, base: int, base_images: int = 0):
        self._inner, self._base, self._base_images = inner, base, base_images

    def __getattr__(self, name):
        return getattr(self._inner, name)

    @property
    def n_generate(self) -> int:
        return self._inner.n_generate - self._base

    @property
    def n_images(self) -> int:
        return self._inner.n_images - self._base_images


def _hv(points: list[tuple[float, float]], scale: float) -> float:
    return hypervolume(np.array(points), quality_scale=scale) if points else 0.0


def _thin(curve: list[tuple[int, float]], n: int = 60, whole_until: float = 60) -> list[list]:
    """Every point up to ``whole_until`` runs (where the variants differ), then ``n`` points spread over the rest."""
    head = [p for p in curve if p[0] <= whole_until]
    tail = curve[len(head) :]
    if len(tail) > n:
        idx = sorted({round(i * (len(tail) - 1) / (n - 1)) for i in range(n)})
        tail = [tail[i] for i in idx]
    return [[r, round(h, 6)] for r, h in head + tail]


def _hv_within(curve: list[tuple[float, float]], limit: float) -> float:
    """The HV of the last point of ``curve`` (x, hv) with x <= ``limit`` (0 before any)."""
    return next((h for x, h in reversed(curve) if x <= limit + 1e-9), 0.0)


def _runs_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((r for r, h in curve if h >= target - 1e-12), None)


def _compare(out: dict, baselines: dict) -> dict:
    """Held-out: per baseline point, the learned fronts' best loss at no more compute (median over seeds), and
    the ratio baseline loss / learned loss (> 1: the learned schedule wins)."""
    cmp: dict = {}
    for vname, v in out["variants"].items():
        rows = []
        for kind, pts in baselines.items():
            for r in pts:
                learned = [
                    _front_at([(p["loss_held"], p["fraction"]) for p in s["front"]], r["fraction_held"])
                    for s in v["seeds"]
                ]
                med = statistics.median(learned)
                rows.append(
                    {
                        "baseline": kind,
                        "knob": r["knob"],
                        "fraction": r["fraction_held"],
                        "speedup": 1 / r["fraction_held"],
                        "loss_baseline": r["loss_held"],
                        "loss_learned": med,
                        "ratio": (r["loss_held"] / med) if med > 0 and math.isfinite(med) else None,
                    }
                )
        cmp[vname] = rows
    return cmp


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)), squeeze=False)
    marks = {"every-n": "s-", "fbcache": "o-", "teacache": "^-"}
    for row, m in zip(axes, models):
        ax = row[0]
        for vname, v in m["variants"].items():
            for s in v["seeds"]:
                c = np.array(s["curve"])
                if len(c):
                    ax.plot(c[:, 0], c[:, 1], label=f"{vname} seed {s['seed']}", alpha=0.8)
        for k, hv in m["hv_cal_baselines"].items():
            ax.axhline(hv, ls=":", color="gray")
            ax.text(0, hv, f" {k} (all knobs)", va="bottom", fontsize=7, color="gray")
        ax.set(xlabel="model runs", ylabel="hypervolume (calibration)", title=f"shapes-{m['family']}: HV vs runs")
        ax.legend(fontsize=7)
        ax = row[1]
        for kind, pts in m["baselines"].items():
            pts = [p for p in pts if p["loss_held"] > 0]
            ax.plot(
                [1 / p["fraction_held"] for p in pts], [p["loss_held"] for p in pts], marks.get(kind, ".-"), label=kind
            )
        for vname, v in m["variants"].items():
            for s in v["seeds"]:
                f = [p for p in s["front"] if p["loss_held"] > 0]  # no-cache has no place on a log axis
                ax.plot(
                    [1 / p["fraction"] for p in f],
                    [p["loss_held"] for p in f],
                    ".--",
                    alpha=0.7,
                    label=f"{vname} front seed {s['seed']}",
                )
        ax.set(xlabel="speed-up (MACs)", ylabel="held-out loss (rel. MSE)", yscale="log", title="held-out fronts")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    setup: Setup,
    families: Sequence[str] = trained.FAMILIES,
    variants: dict[str, Variant] | None = None,
    log=print,
    partial: Callable[[dict], None] | None = None,
    baselines_from: dict | None = None,
) -> dict:
    """The benchmark; ``partial(result)`` gets the result so far after each model and each search.
    ``baselines_from``: family -> an earlier model result whose rule-based sweeps are reused."""
    variants = variants if variants is not None else {"nsga2": VARIANTS["nsga2"]}
    t0 = time.perf_counter()
    result = {
        "bench": "search-efficiency",
        "hardware": hardware("cpu"),
        "torch_threads": torch.get_num_threads(),
        "setup": {k: list(v) if isinstance(v, tuple) else v for k, v in setup.__dict__.items()},
        "models": [],
    }
    for f in families:

        def seed_done(model: dict) -> None:
            if partial is not None:
                partial({**result, "models": [*result["models"], model], "wall_s": time.perf_counter() - t0})

        earlier = (baselines_from or {}).get(f)
        result["models"].append(bench_model(f, setup, variants, log, seed_done, earlier))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if partial is not None:
        partial(result)
    return result


def _merge(results: list[dict], out: Path) -> dict:
    """The first result with every later one's search seeds added (same models and variants, seeds in order)."""
    first = results[0]
    by_family = {m["family"]: m for m in first["models"]}
    for r in results[1:]:
        for m in r["models"]:
            for vname, v in m["variants"].items():
                by_family[m["family"]]["variants"].setdefault(vname, {"seeds": []})["seeds"].extend(v["seeds"])
    for m in first["models"]:
        for v in m["variants"].values():
            v["seeds"].sort(key=lambda s: s["seed"])
    first["setup"]["search_seeds"] = sorted(
        {s["seed"] for m in first["models"] for v in m["variants"].values() for s in v["seeds"]}
    )
    first["merged_wall_s"] = [r.get("wall_s") for r in results]
    first["models"] = [summarise(m) for m in first["models"]]
    write_json(out, first)
    plot(first, out.with_suffix(".png"))
    return first


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks the benchmark works (about a minute)")
    ap.add_argument("--families", nargs="+", default=list(trained.FAMILIES), choices=trained.FAMILIES)
    ap.add_argument(
        "--variants", nargs="+", default=["nsga2"], help=f"search variants (registered: {', '.join(VARIANTS)})"
    )
    ap.add_argument("--budget", type=int, help="model runs per search (default: 265, today's default search)")
    ap.add_argument("--seeds", type=int, help="searches per variant and model (default 3: seeds 0, 1, 2)")
    ap.add_argument("--search-seeds", type=int, nargs="+", help="these search seeds instead (e.g. to add one)")
    ap.add_argument(
        "--calibration-size",
        type=int,
        help=f"calibration captions (default {len(trained.CALIBRATION)}; more are drawn from the caption space)",
    )
    ap.add_argument("--racing", type=int, help="racing variant: samples run first (default a quarter)")
    ap.add_argument(
        "--h100-budget",
        type=float,
        help="also stop each search at these projected H100 seconds of a paper-size run (3600: one H100-hour)",
    )
    ap.add_argument("--population", type=int, help="population of the NSGA-II variants (default 24, the paper's 72)")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a variant option (screening, per_generation, exploration, mutation_flips, probe_seeds, ...)",
    )
    ap.add_argument("--out", help="result JSON (a PNG plot is written beside it)")
    ap.add_argument(
        "--baselines-from",
        nargs="+",
        default=[],
        metavar="JSON",
        help="earlier result files at the same setup: their rule-based sweeps are reused, not rerun",
    )
    ap.add_argument("--summarise", metavar="JSON", help="recompute the summaries and the plot of a result file")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="result files of the same setup but other search seeds (e.g. one process per seed): their seeds "
        "joined per model and variant into --out, summaries and plot recomputed",
    )
    a = ap.parse_args(argv)
    if a.merge:
        if not a.out:
            ap.error("--merge needs --out")
        return _merge([json.loads(Path(p).read_text()) for p in a.merge], Path(a.out))
    if a.summarise:
        result = json.loads(Path(a.summarise).read_text())
        result["models"] = [summarise(m) for m in result["models"]]
        write_json(a.summarise, result)
        plot(result, Path(a.summarise).with_suffix(".png"))
        return result
    unknown = [v for v in a.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown search variant(s) {unknown}; registered: {', '.join(VARIANTS)}")
    setup = QUICK if a.quick else Setup()
    if a.budget:
        setup = dataclasses.replace(setup, budget=a.budget)
    if a.seeds:
        setup = dataclasses.replace(setup, search_seeds=tuple(range(a.seeds)))
    if a.search_seeds:
        setup = dataclasses.replace(setup, search_seeds=tuple(a.search_seeds))
    if a.calibration_size:
        setup = dataclasses.replace(setup, calibration=calibration_set(a.calibration_size))
    if a.racing:
        setup = dataclasses.replace(setup, racing=a.racing)
    if a.population:
        setup = dataclasses.replace(setup, population=a.population)
    if a.h100_budget:
        setup = dataclasses.replace(setup, h100_budget_s=a.h100_budget)
    if a.option:
        opts = {}
        for kv in a.option:
            k, sep, v = kv.partition("=")
            if not sep:
                ap.error(f"--option wants KEY=VALUE, got {kv!r}")
            opts[k] = float(v) if "." in v else int(v)
        setup = dataclasses.replace(setup, options=opts)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def save(result):
        if a.out:
            write_json(a.out, result)
            plot(result, Path(a.out).with_suffix(".png"))

    earlier = {}
    same = ("steps", "seeds_cal", "seeds_held", "calibration", "held_out", "every_n", "fbcache", "teacache")
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in setup.__dict__.items()}
    for path in a.baselines_from:
        old = json.loads(Path(path).read_text())
        diff = [k for k in same if old["setup"].get(k) != mine[k]]
        if diff:
            ap.error(f"{path}: another setup ({', '.join(diff)}); its baselines do not apply")
        for m in old["models"]:
            earlier[m["family"]] = {"baselines": m["baselines"], "source": str(path)}
    result = run(setup, a.families, {v: VARIANTS[v] for v in a.variants}, partial=save, baselines_from=earlier)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
