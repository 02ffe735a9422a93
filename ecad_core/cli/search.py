"""``python -m ecad_core evolve``: search cache schedules for a diffusers pipeline (locally or on Ray workers).

``register(subparsers)`` adds the subcommand; handlers raise EcadError/ValueError for bad input (the main CLI
prints one line and exits 2).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..costs.compute import LATENCY_COST_FILE
from ..errors import EcadError, SearchSettingsError
from ..metrics.names import FIDELITY_SPACES, LEARNED_METRICS
from .common import add_model_and_prompt_args, positive_float, prompts_from_args


class SampleSubsets:
    """A ``DiffusersGenerate`` that also runs a subset of its samples (``samples=``: indices in its prompt-major,
    then seed, order), for racing. Each sample's noise comes from its own seed, so a subset's outputs are the
    full run's; the text embeddings cache is shared."""

    def __init__(self, gen):
        self._gen = gen

    def __getattr__(self, name):
        return getattr(self._gen, name)

    def __call__(self, schedule, samples=None):
        g = self._gen
        if samples is None:
            return g(schedule)
        prompts, seeds = g.prompts, g.seeds
        by_seed: dict[int, list[str]] = {}
        for i in samples:
            by_seed.setdefault(seeds[i % len(seeds)], []).append(prompts[i // len(seeds)])
        got = {}
        try:
            for seed, ps in by_seed.items():
                g.prompts, g.seeds = ps, [seed]
                got.update({(p, seed): o for p, o in zip(ps, g(schedule))})
        finally:
            g.prompts, g.seeds = prompts, seeds
        return [got[(prompts[i // len(seeds)], seeds[i % len(seeds)])] for i in samples]


@dataclass(frozen=True)
class EvolveSpec:
    """How ``evolve`` builds its evaluator. Picklable, so that every Ray worker builds the same one."""

    model: str
    prompts: tuple
    seeds: tuple
    steps: int
    cfg: float
    height: int
    width: int
    batch_size: int | None = None
    metric: str = "latent"
    metric_weights: str | None = None
    cost: str = "macs"
    cost_mode: str = "ecad"
    device: str | None = None
    dtype: str = "auto"

    @classmethod
    def from_args(cls, a, prompts) -> EvolveSpec:
        return cls(
            model=a.model,
            prompts=tuple(prompts),
            seeds=tuple(range(a.seeds_per_prompt)),
            steps=a.steps,
            cfg=a.cfg,
            height=a.height,
            width=a.width,
            batch_size=a.batch_size,
            metric=a.metric,
            metric_weights=a.metric_weights,
            cost=a.cost,
            cost_mode=a.cost_mode,
            device=a.device,
            dtype=a.dtype,
        )

    def __call__(self):
        """Load the pipeline (and a learned metric) and return a ``LocalEvaluator`` on it."""
        from ..diffusers.generate import diffusers_generate_fn
        from ..diffusers.pipelines import load_pipeline
        from ..metrics import LEARNED_METRICS, load_metric
        from ..search.evaluate import LocalEvaluator

        pipe, _ = load_pipeline(self.model, self.device, self.dtype)
        output = "image" if self.metric in ("ssim", "image-mse") + LEARNED_METRICS else "latent"
        gen = diffusers_generate_fn(
            pipe,
            list(self.prompts),
            list(self.seeds),
            self.steps,
            self.cfg,
            self.height,
            self.width,
            batch_size=self.batch_size,
            output=output,
            model_name=self.model,
            step0_memo=True,  # every candidate's step 0 equals the first run's: served from it
        )
        metric = (
            load_metric(self.metric, self.metric_weights, gen.pipe.device) if self.metric in LEARNED_METRICS else None
        )
        return LocalEvaluator(SampleSubsets(gen), space=self.metric, metric=metric)

    def search_inputs(self, evaluator, saved_cost=None):
        """(layout, compute cost, model hint for schedules) of the pipeline behind ``evaluator``.

        ``saved_cost``: a measured latency cost from an earlier run of the same search (reused so that a
        resume sees the same objective)."""
        from ..costs import cost_for_transformer, uniform_cost
        from ..costs.latency import measured_latency_cost
        from ..diffusers.adapters import find_diffusers_units
        from ..diffusers.pipelines import TINY_PREFIX, model_hint, text_tokens
        from ..schedule import Schedule

        gen = evaluator.generate
        pipe = gen.pipe
        layout = find_diffusers_units(pipe.transformer).layout
        if self.cost == "uniform":
            cost = uniform_cost(layout, self.steps)
        elif self.cost == "latency":
            if saved_cost is not None and saved_cost.unit.shape == (self.steps, layout.n_units):
                cost = saved_cost
            else:
                full = Schedule.full(layout, self.steps, name="all-recompute")
                cost = measured_latency_cost(
                    pipe.transformer, layout, self.steps, lambda: gen(None), run_patched=lambda: gen(full)
                )
        else:
            cost = cost_for_transformer(
                pipe.transformer,
                layout,
                self.steps,
                self.height,
                self.width,
                text_tokens=text_tokens(pipe, gen),
                mode=self.cost_mode,
            )
        hint = None if self.model.startswith(TINY_PREFIX) else model_hint(pipe)
        return layout, cost, hint


def _probe_changes(evaluator, steps: int):
    """The unit probe's table on ``evaluator``'s pipeline, None if it saw no unit (module level: Ray sends it to a
    worker)."""
    from ..diffusers.adapters import find_diffusers_units
    from ..engine.probe import probe_unit_changes

    gen = evaluator.generate
    return probe_unit_changes(gen, find_diffusers_units(gen.pipe.transformer).layout, steps)


def _unit_changes(a, settings, evaluator, n_samples: int):
    """``sensitivity.unit_changes_for`` on this search: from the search folder on resume, else probed (and kept
    there), or skipped with a warning when the probe sees no unit."""
    from ..search.sensitivity import unit_changes_for

    def run_probe():
        if not a.quiet:
            print(f"probing unit changes (one full-compute run of {n_samples} samples)...", file=sys.stderr)
        if a.ray:
            return evaluator.on_worker(functools.partial(_probe_changes, steps=a.steps))
        return _probe_changes(evaluator, a.steps)

    return unit_changes_for(a.out, settings.probe_seeds, run_probe, host=f"diffusers, model {a.model}")


def _step0_shared(evaluator) -> int | None:
    """Step-0 model calls the local evaluator's memo served (None on Ray: each worker has its own)."""
    memo = getattr(getattr(evaluator, "generate", None), "step0_memo", None)
    return memo.shared if memo is not None else None


def _ray_evaluator(a, spec: EvolveSpec):
    """``--ray``: a RayEvaluator whose workers each build ``spec``'s evaluator."""
    from ..search.ray_backend import RayEvaluator

    if a.ray_workers is not None and a.ray_workers < 1:
        raise SearchSettingsError(f"--ray-workers must be >= 1, got {a.ray_workers}")
    return RayEvaluator(
        spec,
        address=a.ray,
        workers=a.ray_workers,
        gpus_per_worker=a.ray_gpus_per_worker,
        cpus_per_worker=a.ray_cpus_per_worker,
    )


def cmd_evolve(a) -> int:
    from ..search import SearchSettings
    from ..search.sensitivity import resolve_probe_seeds

    if a.seeds_per_prompt < 1:
        raise SearchSettingsError(f"--seeds-per-prompt must be >= 1, got {a.seeds_per_prompt}")
    settings = SearchSettings(
        population=a.population,
        generations=a.generations,
        time_budget_s=a.time_budget,
        seed=a.seed,
        mutation_prob=a.mutation_prob,
        crossover_points=a.crossover_points,
        heuristic_seeds=not a.no_heuristic_seeds,
        screening=a.screening,
        evaluated_per_generation=a.evaluated_per_generation,
        racing=a.racing,
        racing_margin=a.racing_margin,
        probe_seeds=resolve_probe_seeds(a.probe_seeds, a.out, a.population, a.steps, input_name="--probe-seeds"),
    )
    settings.validate()  # before loading anything heavy
    prompts = prompts_from_args(a)
    spec = EvolveSpec.from_args(a, prompts)
    saved = None
    cost_file = Path(a.out) / LATENCY_COST_FILE
    if a.cost == "latency" and cost_file.is_file():
        from ..costs import ComputeCost

        saved = ComputeCost.load(cost_file)
    if a.ray:
        evaluator = _ray_evaluator(a, spec)  # checks that Ray is installed before anything starts
        try:
            inputs = evaluator.on_worker(functools.partial(spec.search_inputs, saved_cost=saved))
            _save_latency(a, inputs[1], cost_file)
            return _evolve(a, settings, spec, evaluator, *inputs)
        finally:
            evaluator.close()
    evaluator = spec()
    inputs = spec.search_inputs(evaluator, saved_cost=saved)
    _save_latency(a, inputs[1], cost_file)
    return _evolve(a, settings, spec, evaluator, *inputs)


def _save_latency(a, cost, path: Path) -> None:
    # a measured objective is kept with the search: a resume must see exactly the same costs
    if a.cost == "latency" and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cost.save(path)


def _evolve(a, settings, spec, evaluator, layout, cost, hint) -> int:
    """Run the search with ``evaluator`` (local or Ray), write picked.json and print the summary."""
    from ..search import pick, run_search

    t0 = time.monotonic()
    quiet = a.quiet
    n_samples = len(spec.prompts) * len(spec.seeds)
    probe = _unit_changes(a, settings, evaluator, n_samples)
    settings = dataclasses.replace(settings, probe_seeds=probe.probe_seeds)  # 0 when the probe was skipped
    probe_images = n_samples if probe.probed else 0

    def progress(phase, done, total):
        if quiet:
            return
        if phase == "reference" and done == 0:
            print(f"computing full-compute references ({n_samples} samples)...", file=sys.stderr)
        elif phase == "generation":
            tot = f"/{total - 1}" if total else ""
            print(
                f"generation {done - 1}{tot} done: {evaluator.n_generate} sampling runs, {time.monotonic() - t0:.1f}s",
                file=sys.stderr,
            )

    res = run_search(
        evaluator,
        layout,
        a.steps,
        a.out,
        settings,
        cost=cost,
        warm_start=a.warm_start or (),
        warm_start_steps="remap" if a.remap_warm_start else "refuse",
        model=hint,
        progress=progress,
        unit_changes=probe.changes,
    )
    if not res.front:
        raise EcadError("the search evaluated nothing (cancelled before the first generation)")
    chosen = pick(res.front, target_speedup=a.target_speedup, max_quality_loss=a.max_quality_loss)
    picked_path = Path(a.out) / "picked.json"
    chosen.schedule.save(picked_path)
    summary = {
        "out": str(a.out),
        "front_dir": str(res.front_dir),
        "generation": res.generation,
        "evaluations": res.evaluations,
        "stopped": res.stopped,
        "resumed_from_generation": res.resumed_from,
        "hypervolume": res.hypervolume,
        "compute_model": cost.source,
        "metric": a.metric,
        "sampling_runs": evaluator.n_generate,
        # the reference's included, and the unit probe's run (probe_images) of this call
        "images_sampled": (evaluator.n_images + probe_images) if hasattr(evaluator, "n_images") else None,
        "probe_seeds": settings.probe_seeds,
        "probe_images": probe_images,
        "probe_skipped": probe.skipped,  # why the search ran without probe seeds (None: it did not)
        # step-0 model calls served from the first run of the same batch (ecad_core.engine.step0), this call's
        "step0_shared": _step0_shared(evaluator),
        "raced_out": res.raced_out,
        "seconds": round(time.monotonic() - t0, 2),
        "front": [
            {
                "file": p.path.name if p.path else None,
                "quality_loss": p.quality_loss,
                "expected_speedup": round(p.expected_speedup, 4),
                "generation": p.generation,
            }
            for p in res.front
        ],
        "picked": {
            "file": str(picked_path),
            "from": chosen.path.name if chosen.path else None,
            "quality_loss": chosen.quality_loss,
            "expected_speedup": round(chosen.expected_speedup, 4),
        },
    }
    if a.ray:
        summary["ray"] = {
            "workers": evaluator.workers,
            "lost_workers": evaluator.lost_workers,
            "reruns": evaluator.reruns,
        }
    print(
        json.dumps(
            summary, indent=2, default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else str(x)
        )
    )
    return 0


def register(subparsers) -> None:
    """Add ``evolve`` to ``python -m ecad_core``'s subparsers."""

    q = subparsers.add_parser(
        "evolve",
        help="search cache schedules (NSGA-II) for a diffusers pipeline",
        description="Search ECAD cache schedules with NSGA-II: quality loss vs the "
        "full-compute outputs of the calibration prompts, and compute "
        "fraction. Resumes automatically from a checkpoint in --out.",
    )
    add_model_and_prompt_args(q)
    q.add_argument("--seeds-per-prompt", type=int, default=1, help="images per prompt (seeds 0..K-1)")
    q.add_argument("--steps", type=int, default=20)
    q.add_argument("--population", type=int, default=24)
    q.add_argument("--generations", type=int, default=10, help="generations after the initial population (default 10)")
    q.add_argument(
        "--time-budget",
        type=positive_float,
        default=None,
        help="seconds; no generation starts after it (a running one finishes)",
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the search (population, operators)")
    q.add_argument("--out", required=True, help="output folder: checkpoint, references, front/")
    q.add_argument(
        "--warm-start",
        action="append",
        default=None,
        help="schedule file or folder (e.g. an earlier front/) to seed the population; repeatable",
    )
    q.add_argument(
        "--remap-warm-start",
        action="store_true",
        help="remap warm-start schedules with another step count (default: refuse them)",
    )
    q.add_argument(
        "--metric",
        default="latent",
        choices=list(FIDELITY_SPACES + LEARNED_METRICS),
        help="quality loss: latent (relative MSE of final latents vs full compute; default), "
        "ssim (1-SSIM of images), image-mse, or the learned clip / imagereward (score drop)",
    )
    q.add_argument(
        "--metric-weights", default=None, help="local weights of a learned metric (CLIP folder, or ImageReward.pt)"
    )
    q.add_argument(
        "--cost",
        default="macs",
        choices=["macs", "latency", "uniform"],
        help="compute objective: analytic MACs of the model (default; uniform if unknown), latency "
        "of each unit measured on this device in one full-compute run (kept in "
        f"<out>/{LATENCY_COST_FILE} for resumes), or every unit equal",
    )
    q.add_argument(
        "--cost-mode",
        default="ecad",
        choices=["ecad", "full"],
        help="MAC counting: ecad (linear layers, as ECAD measured) or full (with attention products)",
    )
    q.add_argument(
        "--mutation-prob",
        type=float,
        default=None,
        help="per-bit flip probability (default: 2 / genome length with probe seeds, else 1 / units per step)",
    )
    q.add_argument("--crossover-points", type=int, default=4)
    q.add_argument(
        "--screening",
        type=int,
        default=0,
        help="surrogate pre-screening: breed this many offspring per evaluated one, evaluate the promising (0: off)",
    )
    q.add_argument("--evaluated-per-generation", type=int, default=None, help="new schedules evaluated per generation")
    q.add_argument(
        "--racing",
        type=int,
        default=0,
        help="racing over samples: run this many calibration samples first, the rest only for candidates that "
        "can still reach the front (0: off; not with --ray or a learned metric)",
    )
    q.add_argument(
        "--racing-margin",
        type=float,
        default=0.1,
        help="racing: shrink the optimistic bound by this share (larger: fewer candidates stopped)",
    )
    q.add_argument(
        "--probe-seeds",
        default="auto",
        help="schedules from the unit probe (one full-compute run that measures how each unit's output changes "
        "between steps) first in the initial population: a number, 0 (off) or auto (default: steps - 1, at most "
        "population - 4; a resumed search keeps what it started with)",
    )
    q.add_argument(
        "--no-heuristic-seeds", action="store_true", help="initial population from warm starts + mutated copies only"
    )
    q.add_argument(
        "--target-speedup", type=positive_float, default=None, help="pick: lowest-loss front point at least this fast"
    )
    q.add_argument(
        "--max-quality-loss", type=float, default=None, help="pick: fastest front point with at most this loss"
    )
    q.add_argument("--quiet", action="store_true", help="no per-generation lines on stderr")
    q.add_argument(
        "--ray",
        default=None,
        metavar="auto|local|ADDRESS",
        help="evaluate on Ray workers (pip install 'comfyui-ecad[ray]'): auto (the cluster running on "
        "this machine or in RAY_ADDRESS, else a new local one), local, or a cluster address",
    )
    q.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        help="number of Ray workers, each holding a loaded pipeline (default: one per GPU of the "
        "cluster, or one per CPU without GPUs)",
    )
    q.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per Ray worker (default: 1 if the cluster has GPUs, else 0; 0.5 puts two on a GPU)",
    )
    q.add_argument("--ray-cpus-per-worker", type=float, default=1.0, help="CPUs per Ray worker (default 1)")
    q.set_defaults(fn=cmd_evolve)
