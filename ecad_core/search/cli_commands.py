"""``python -m ecad_core evolve`` and ``python -m ecad_core run`` (diffusers pipelines).

``register(subparsers)`` adds both subcommands to the main parser; handlers
raise EcadError/ValueError for bad input (the main CLI prints one line and
exits 2).
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EcadError
from .errors import SearchSettingsError
from .objectives import LATENCY_COST_FILE

TINY_PREFIX = "tiny:"
PROMPT_SETS = {
    # ECAD's calibration set: ImageReward's 100 benchmark prompts ([{"id", "prompt"}]).
    "ecad-calibration": ("prompts/ImageRewardPrompts.json", "prompts/imagereward/ImageRewardPrompts.json",
                         "data/prompts/ImageRewardPrompts.json"),
}
REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS_DIR_ENV = "ECAD_PROMPTS_DIR"
SEED_RANGE = 2 ** 64  # noise seeds of `run --seeds`: what torch.Generator.manual_seed takes


# -- inputs ---------------------------------------------------------------------------
def load_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from a .txt (one per line), .json (a list of strings or of {"prompt": ...} objects, as
    ECAD's ImageRewardPrompts.json) or .tsv (PartiPrompts: column "Prompt") file; blank lines skipped."""
    p = Path(path)
    if not p.is_file():
        raise SearchSettingsError(f"prompts file {p}: not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SearchSettingsError(f"prompts file {p}: cannot read as UTF-8 text ({e})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SearchSettingsError(f"prompts file {p}: not valid JSON ({e})") from None
        if not isinstance(data, list):
            raise SearchSettingsError(f"prompts file {p}: expected a JSON list of prompts")
        prompts = []
        for i, item in enumerate(data):
            if isinstance(item, dict) and isinstance(item.get("prompt"), str):
                prompts.append(item["prompt"])
            elif isinstance(item, str):
                prompts.append(item)
            else:
                raise SearchSettingsError(f"prompts file {p}: item {i} is neither a string nor an object "
                                          "with a 'prompt' string")
    elif p.suffix.lower() == ".tsv":
        rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
        if not rows or "Prompt" not in rows[0]:
            raise SearchSettingsError(f"prompts file {p}: a .tsv needs a header row with a 'Prompt' column")
        col = rows[0].index("Prompt")
        prompts = [r[col] for r in rows[1:] if len(r) > col]
    else:
        prompts = text.splitlines()
    prompts = [s.strip() for s in prompts if s.strip()]
    if not prompts:
        raise SearchSettingsError(f"prompts file {p}: holds no prompts")
    if limit is not None:
        if limit < 1:
            raise SearchSettingsError(f"--num-prompts must be >= 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def prompt_set_path(name: str) -> Path:
    """The repository's copy of a named prompt set (or ``$ECAD_PROMPTS_DIR/<file name>``)."""
    if name not in PROMPT_SETS:
        raise SearchSettingsError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)}")
    rels = PROMPT_SETS[name]
    cands = []
    env = os.environ.get(PROMPTS_DIR_ENV)
    if env:
        cands.append(Path(env) / Path(rels[0]).name)
    cands += [REPO_ROOT / r for r in rels]
    for c in cands:
        if c.is_file():
            return c
    raise SearchSettingsError(f"prompt set {name!r}: none of {', '.join(str(c) for c in cands)} exists; "
                              f"pass the file with --prompts PATH (ECAD used ImageRewardPrompts.json)")


def _device_dtype(device: str | None, dtype: str):
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        if str(dev).startswith("cuda"):
            dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dt = torch.float32
    else:
        dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    return dev, dt


def load_pipeline(model: str, device: str | None = None, dtype: str = "auto"):
    """A diffusers pipeline from a local folder / cached model id (never downloads) or ``tiny:<name>``.

    Returns (pipeline, model hint for schedules or None).
    """
    dev, dt = _device_dtype(device, dtype)
    if model.startswith(TINY_PREFIX):
        from ..tiny import tiny_pipeline

        pipe = tiny_pipeline(model[len(TINY_PREFIX):])
        hint = None  # tiny random weights: not a real architecture's schedule
    else:
        try:
            from diffusers import DiffusionPipeline
        except ImportError:
            raise EcadError("this command needs the 'diffusers' package (pip install diffusers transformers)") \
                from None
        try:
            pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True, torch_dtype=dt)
        except (OSError, ValueError, EnvironmentError) as e:
            raise EcadError(f"cannot load a diffusers pipeline from {model!r} with local files only: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        hint = _model_hint(pipe)
    if getattr(pipe, "transformer", None) is None:
        raise EcadError(f"{model!r}: the pipeline has no transformer (ECAD caches DiT blocks; "
                        f"got {type(pipe).__name__})")
    pipe = pipe.to(dev)
    if pipe.transformer.dtype != dt:
        pipe = pipe.to(dtype=dt)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe, hint


def _model_hint(pipe) -> str | None:
    k = type(pipe).__name__
    if k.startswith("PixArtAlpha"):
        return "pixart-alpha"
    if k.startswith("PixArtSigma"):
        return "pixart-sigma"
    if k.startswith("Flux"):
        return "flux-dev" if getattr(pipe.transformer.config, "guidance_embeds", False) else "flux-schnell"
    return None


def _prompts_from_args(a, need: bool = True) -> list[str]:
    if getattr(a, "prompt", None):
        return list(a.prompt)
    if a.prompts and a.prompts_set:
        raise SearchSettingsError("give --prompts or --prompts-set, not both")
    if a.prompts:
        return load_prompts(a.prompts, a.num_prompts)
    if a.prompts_set:
        return load_prompts(prompt_set_path(a.prompts_set), a.num_prompts)
    if need:
        raise SearchSettingsError("no prompts: give --prompts FILE or --prompts-set ecad-calibration")
    return []


def _text_tokens(pipe, gen) -> int | None:
    k = type(pipe).__name__
    if k.startswith("Flux"):
        return gen.extra.get("max_sequence_length")
    if k.startswith("PixArtSigma"):
        return 300
    return None


# -- evolve -------------------------------------------------------------------------
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
    def from_args(cls, a, prompts) -> "EvolveSpec":
        return cls(model=a.model, prompts=tuple(prompts), seeds=tuple(range(a.seeds_per_prompt)), steps=a.steps,
                   cfg=a.cfg, height=a.height, width=a.width, batch_size=a.batch_size, metric=a.metric,
                   metric_weights=a.metric_weights, cost=a.cost, cost_mode=a.cost_mode, device=a.device,
                   dtype=a.dtype)

    def __call__(self):
        """Load the pipeline (and a learned metric) and return a ``LocalEvaluator`` on it."""
        from ..metrics import LEARNED_METRICS, load_metric
        from .evaluate import LocalEvaluator, diffusers_generate_fn

        pipe, _ = load_pipeline(self.model, self.device, self.dtype)
        output = "image" if self.metric in ("ssim", "image-mse") + LEARNED_METRICS else "latent"
        gen = diffusers_generate_fn(pipe, list(self.prompts), list(self.seeds), self.steps, self.cfg, self.height,
                                    self.width, batch_size=self.batch_size, output=output, model_name=self.model)
        metric = (load_metric(self.metric, self.metric_weights, gen.pipe.device)
                  if self.metric in LEARNED_METRICS else None)
        return LocalEvaluator(gen, space=self.metric, metric=metric)

    def search_inputs(self, evaluator, saved_cost=None):
        """(layout, compute cost, model hint for schedules) of the pipeline behind ``evaluator``.

        ``saved_cost``: a measured latency cost from an earlier run of the same search (reused so that a
        resume sees the same objective)."""
        from ..adapters import find_diffusers_units
        from ..schedule import Schedule
        from .objectives import cost_for_transformer, measured_latency_cost, uniform_cost

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
                cost = measured_latency_cost(pipe.transformer, layout, self.steps, lambda: gen(None),
                                             run_patched=lambda: gen(full))
        else:
            cost = cost_for_transformer(pipe.transformer, layout, self.steps, self.height, self.width,
                                        text_tokens=_text_tokens(pipe, gen), mode=self.cost_mode)
        hint = None if self.model.startswith(TINY_PREFIX) else _model_hint(pipe)
        return layout, cost, hint


def _ray_evaluator(a, spec: EvolveSpec):
    """``--ray``: a RayEvaluator whose workers each build ``spec``'s evaluator."""
    from .ray_backend import RayEvaluator

    if a.ray_workers is not None and a.ray_workers < 1:
        raise SearchSettingsError(f"--ray-workers must be >= 1, got {a.ray_workers}")
    return RayEvaluator(spec, address=a.ray, workers=a.ray_workers, gpus_per_worker=a.ray_gpus_per_worker,
                        cpus_per_worker=a.ray_cpus_per_worker)


def cmd_evolve(a) -> int:
    from .nsga import SearchSettings

    if a.seeds_per_prompt < 1:
        raise SearchSettingsError(f"--seeds-per-prompt must be >= 1, got {a.seeds_per_prompt}")
    settings = SearchSettings(population=a.population, generations=a.generations, time_budget_s=a.time_budget,
                              seed=a.seed, mutation_prob=a.mutation_prob, crossover_points=a.crossover_points,
                              heuristic_seeds=not a.no_heuristic_seeds)
    settings.validate()  # before loading anything heavy
    prompts = _prompts_from_args(a)
    spec = EvolveSpec.from_args(a, prompts)
    saved = None
    cost_file = Path(a.out) / LATENCY_COST_FILE
    if a.cost == "latency" and cost_file.is_file():
        from .objectives import ComputeCost
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
    from .front import pick
    from .nsga import run_search

    t0 = time.monotonic()
    quiet = a.quiet
    n_samples = len(spec.prompts) * len(spec.seeds)

    def progress(phase, done, total):
        if quiet:
            return
        if phase == "reference" and done == 0:
            print(f"computing full-compute references ({n_samples} samples)...", file=sys.stderr)
        elif phase == "generation":
            tot = f"/{total - 1}" if total else ""
            print(f"generation {done - 1}{tot} done: {evaluator.n_generate} sampling runs, "
                  f"{time.monotonic() - t0:.1f}s", file=sys.stderr)

    res = run_search(evaluator, layout, a.steps, a.out, settings, cost=cost, warm_start=a.warm_start or (),
                     warm_start_steps="remap" if a.remap_warm_start else "refuse", model=hint, progress=progress)
    if not res.front:
        raise EcadError("the search evaluated nothing (cancelled before the first generation)")
    chosen = pick(res.front, target_speedup=a.target_speedup, max_quality_loss=a.max_quality_loss)
    picked_path = Path(a.out) / "picked.json"
    chosen.schedule.save(picked_path)
    summary = {
        "out": str(a.out), "front_dir": str(res.front_dir), "generation": res.generation,
        "evaluations": res.evaluations, "stopped": res.stopped, "resumed_from_generation": res.resumed_from,
        "hypervolume": res.hypervolume, "compute_model": cost.source, "metric": a.metric,
        "sampling_runs": evaluator.n_generate, "seconds": round(time.monotonic() - t0, 2),
        "front": [{"file": p.path.name if p.path else None, "quality_loss": p.quality_loss,
                   "expected_speedup": round(p.expected_speedup, 4), "generation": p.generation}
                  for p in res.front],
        "picked": {"file": str(picked_path), "from": chosen.path.name if chosen.path else None,
                   "quality_loss": chosen.quality_loss, "expected_speedup": round(chosen.expected_speedup, 4)},
    }
    if a.ray:
        summary["ray"] = {"workers": evaluator.workers, "lost_workers": evaluator.lost_workers,
                          "reruns": evaluator.reruns}
    print(json.dumps(summary, indent=2, default=lambda x: None if isinstance(x, float) and not math.isfinite(x)
                     else str(x)))
    return 0


# -- run ------------------------------------------------------------------------------
def cmd_run(a) -> int:
    from ..schedule import load_schedule
    from .evaluate import diffusers_generate_fn

    # before loading anything: torch gives a raw overflow error (and wraps a small negative silently)
    bad = [s for s in a.seeds if not 0 <= s < SEED_RANGE]
    if bad:
        raise EcadError(f"--seeds: {bad[0]} is out of range; a seed is an integer in 0..{SEED_RANGE - 1}")
    prompts = _prompts_from_args(a)
    schedule = load_schedule(a.schedule) if a.schedule else None
    steps = a.steps or (schedule.steps if schedule is not None else 20)
    pipe, _ = load_pipeline(a.model, a.device, a.dtype)
    gen = diffusers_generate_fn(pipe, prompts, a.seeds, steps, a.cfg, a.height, a.width, output="image",
                                batch_size=a.batch_size, model_name=a.model)
    t = time.perf_counter()
    images = gen(schedule)
    secs = time.perf_counter() - t
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    files = []
    i = 0
    for pi, p in enumerate(prompts):
        for seed in gen.seeds:
            arr = (images[i].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            f = out / f"{pi:03d}_seed{seed}.png"
            Image.fromarray(arr).save(f)
            files.append({"file": f.name, "prompt": p, "seed": seed})
            i += 1
    stats = [s.as_dict() for s in gen.last_stats] if schedule is not None else []
    if schedule is not None:
        reused = sum(s["reused"] for s in stats)
        total = reused + sum(s["computed"] for s in stats)
        line = (f"{reused}/{total} unit calls reused ({100 * reused / max(total, 1):.1f}%) with schedule "
                f"{schedule.name!r} over {len(stats)} pipeline call(s)")
    else:
        line = "no schedule: full compute"
    report = {"schedule": a.schedule, "steps": steps, "images": files, "seconds": round(secs, 3),
              "stats": stats}
    (out / "run.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(line)
    print(f"wrote {len(files)} image(s) to {out} in {secs:.2f}s")
    return 0


# -- parser -----------------------------------------------------------------------------
def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s!r}")
    return v


def _common(q, schedule_steps_default=None):
    q.add_argument("--model", required=True,
                   help="diffusers model folder or cached model id (local files only), or tiny:pixart-alpha, "
                        "tiny:pixart-sigma, tiny:flux-dev, tiny:flux-schnell (built-in random weights)")
    q.add_argument("--prompts", default=None, help="prompts file: .txt (one per line), .json (list of strings "
                                                   "or ECAD's [{\"id\", \"prompt\"}]) or .tsv (column Prompt)")
    q.add_argument("--prompts-set", default=None, choices=sorted(PROMPT_SETS),
                   help="a prompt set shipped with the repository (ecad-calibration: ImageReward's 100 prompts)")
    q.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    add_sampling_args(q)


def add_sampling_args(q) -> None:
    """Options every pipeline-driving subcommand shares (evolve, run, eval)."""
    q.add_argument("--cfg", type=float, default=4.5, help="guidance scale (default 4.5)")
    q.add_argument("--height", type=int, default=256)
    q.add_argument("--width", type=int, default=256)
    q.add_argument("--batch-size", type=int, default=None, help="prompts per pipeline call (default: all)")
    q.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    q.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])


def register(subparsers) -> None:
    """Add ``evolve`` and ``run`` to ``python -m ecad_core``'s subparsers."""
    from ..metrics import FIDELITY_SPACES, LEARNED_METRICS

    q = subparsers.add_parser("evolve", help="search cache schedules (NSGA-II) for a diffusers pipeline",
                              description="Search ECAD cache schedules with NSGA-II: quality loss vs the "
                                          "full-compute outputs of the calibration prompts, and compute "
                                          "fraction. Resumes automatically from a checkpoint in --out.")
    _common(q)
    q.add_argument("--seeds-per-prompt", type=int, default=1, help="images per prompt (seeds 0..K-1)")
    q.add_argument("--steps", type=int, default=20)
    q.add_argument("--population", type=int, default=24)
    q.add_argument("--generations", type=int, default=10,
                   help="generations after the initial population (default 10)")
    q.add_argument("--time-budget", type=_positive_float, default=None,
                   help="seconds; no generation starts after it (a running one finishes)")
    q.add_argument("--seed", type=int, default=0, help="seed of the search (population, operators)")
    q.add_argument("--out", required=True, help="output folder: checkpoint, references, front/")
    q.add_argument("--warm-start", action="append", default=None,
                   help="schedule file or folder (e.g. an earlier front/) to seed the population; repeatable")
    q.add_argument("--remap-warm-start", action="store_true",
                   help="remap warm-start schedules with another step count (default: refuse them)")
    q.add_argument("--metric", default="latent", choices=list(FIDELITY_SPACES + LEARNED_METRICS),
                   help="quality loss: latent (relative MSE of final latents vs full compute; default), "
                        "ssim (1-SSIM of images), image-mse, or the learned clip / imagereward (score drop)")
    q.add_argument("--metric-weights", default=None,
                   help="local weights of a learned metric (CLIP folder, or ImageReward.pt)")
    q.add_argument("--cost", default="macs", choices=["macs", "latency", "uniform"],
                   help="compute objective: analytic MACs of the model (default; uniform if unknown), latency "
                        "of each unit measured on this device in one full-compute run (kept in "
                        f"<out>/{LATENCY_COST_FILE} for resumes), or every unit equal")
    q.add_argument("--cost-mode", default="ecad", choices=["ecad", "full"],
                   help="MAC counting: ecad (linear layers, as ECAD measured) or full (with attention products)")
    q.add_argument("--mutation-prob", type=float, default=None,
                   help="per-bit flip probability (default: 1 / units per step)")
    q.add_argument("--crossover-points", type=int, default=4)
    q.add_argument("--no-heuristic-seeds", action="store_true",
                   help="initial population from warm starts + mutated copies only")
    q.add_argument("--target-speedup", type=_positive_float, default=None,
                   help="pick: lowest-loss front point at least this fast")
    q.add_argument("--max-quality-loss", type=float, default=None,
                   help="pick: fastest front point with at most this loss")
    q.add_argument("--quiet", action="store_true", help="no per-generation lines on stderr")
    q.add_argument("--ray", default=None, metavar="auto|local|ADDRESS",
                   help="evaluate on Ray workers (pip install 'comfyui-ecad[ray]'): auto (the cluster running on "
                        "this machine or in RAY_ADDRESS, else a new local one), local, or a cluster address")
    q.add_argument("--ray-workers", type=int, default=None,
                   help="number of Ray workers, each holding a loaded pipeline (default: one per GPU of the "
                        "cluster, or one per CPU without GPUs)")
    q.add_argument("--ray-gpus-per-worker", type=float, default=None,
                   help="GPUs per Ray worker (default: 1 if the cluster has GPUs, else 0; 0.5 puts two on a GPU)")
    q.add_argument("--ray-cpus-per-worker", type=float, default=1.0, help="CPUs per Ray worker (default 1)")
    q.set_defaults(fn=cmd_evolve)

    q = subparsers.add_parser("run", help="generate images with a schedule on a diffusers pipeline",
                              description="Generate PNG images with a cache schedule applied (or full compute "
                                          "without --schedule) and print how many unit calls were reused.")
    _common(q)
    q.add_argument("--schedule", default=None, help="schedule file (project or ECAD format)")
    q.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    q.add_argument("--seeds", type=int, nargs="+", default=[0])
    q.add_argument("--steps", type=int, default=None, help="default: the schedule's steps (20 without one)")
    q.add_argument("--out", required=True, help="folder for the PNG images and run.json")
    q.set_defaults(fn=cmd_run)
