"""Evolve ECAD Schedule: the NSGA-II schedule search run inside a ComfyUI workflow.

The node is glue around ``ecad_core.search.run_search``: its ``generate``
samples the connected MODEL with ComfyUI's own sampler (``nodes/sampling.py``),
the calibration samples (prompt x seed) batched into one sampler call (up to
``SAMPLES_PER_CALL``), with the candidate schedule applied
by the same ``patch_model`` as Apply ECAD Cache Schedule. The search folder is
``models/ecad_schedules/<output_name>/``: checkpoint, reference outputs and the
front (``front/*.json``, listed by the Apply and Load nodes without a restart).

Cancelling (ComfyUI's Cancel) raises inside an evaluation; the search saves
its checkpoint before the exception leaves, and running the node again with the
same settings resumes from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.utils
import numpy as np
import torch

from ..ecad_core.costs import LATENCY_COST_FILE, ComputeCost
from ..ecad_core.costs.latency import measured_latency_cost
from ..ecad_core.engine.probe import probe_unit_changes
from ..ecad_core.errors import EcadError
from ..ecad_core.metrics import FIDELITY_SPACES, IMAGE_SPACES
from ..ecad_core.schedule import Schedule, remap_steps
from ..ecad_core.schedule.remap import Slice, embed_stage, stage_rows
from ..ecad_core.search import (
    CheckpointError,
    LocalEvaluator,
    SearchRun,
    SearchSettings,
    SearchSettingsError,
    fingerprint,
    pick,
)
from ..ecad_core.search.checkpoint import CHECKPOINT_FILE, LEGACY_CHECKPOINT_FILES
from ..ecad_core.search.front import FRONT_PLOT
from ..ecad_core.search.sensitivity import parse_probe_seeds, resolve_probe_seeds, unit_changes_for
from . import library
from .adapters import adapter_for
from .adapters.base import comfy_version
from .library import SCHEDULE_TYPE
from .patching import refuse_applied_model
from .preview_node import schedule_image
from .sampling import (
    Sample,
    Sampler,
    SamplerSettings,
    encode,
    latent_ratio,
    prompt_lines,
    sampler_inputs,
    zero_conditioning,
)

log = logging.getLogger("ecad")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")  # fullmatch: "$" would let a final newline in
SEED_RANGE = 2**64  # ComfyUI's noise seeds (KSampler's seed widget): 0 .. 2**64 - 1
# calibration samples per sampler call at most: batch 1 costs 10-15x per image on a GPU (issue #19);
# samples_per_call lowers it where the activations would not fit
SAMPLES_PER_CALL = 32
DEFAULT_PROMPTS = (
    "A photo of an astronaut riding a horse on the moon\n"
    "A cozy cabin in a snowy forest at dusk, warm light in the windows\n"
    "A close-up portrait of an old fisherman, dramatic lighting"
)


def search_dir(output_name: str) -> Path:
    if not isinstance(output_name, str) or not _NAME_RE.fullmatch(output_name) or ".." in output_name:
        raise EcadError(
            f"output_name {output_name!r}: use 1-80 letters, digits, '.', '_' or '-' (it names "
            f"the folder models/{library.FOLDER_NAME}/<output_name>)"
        )
    return library.user_dirs()[0] / output_name


def sample_seeds(first_seed: int, seeds_per_prompt: int) -> list[int]:
    """Noise seeds of each prompt's samples: first_seed, +1, ..., wrapping past the largest seed to 0."""
    return [(int(first_seed) + i) % SEED_RANGE for i in range(int(seeds_per_prompt))]


@dataclass(frozen=True)
class EvolveInputs(SamplerSettings):
    """The node's inputs, by their names in ``INPUT_TYPES`` (the names saved workflows hold)."""

    model: Any
    prompts: str
    seeds_per_prompt: int
    first_seed: int
    population: int
    generations: int
    time_budget_minutes: float
    quality_metric: str
    compute_objective: str
    target_speedup: float
    output_name: str
    search_seed: int
    resume: bool
    clip: Any = None
    positive: Any = None
    negative: Any = None
    vae: Any = None
    warm_start: Schedule | None = None
    # the stage the model runs (KSamplerAdvanced's names; 10000: to the end) and the other expert
    start_at_step: int = 0
    end_at_step: int = 10000
    other_model: Any = None
    probe_seeds: int = -1  # -1: auto (sensitivity.resolve_probe_seeds)

    def stage(self) -> Slice:
        """The steps the connected model runs, checked: the whole trajectory, or one stage of it with the other
        expert connected to run the rest."""
        n, a = int(self.steps), int(self.start_at_step)
        b = min(int(self.end_at_step), n)
        if not 0 <= a < n:
            raise SearchSettingsError(f"start_at_step {a} is not a step of the {n}-step trajectory (steps 0..{n - 1})")
        if a >= b:
            raise SearchSettingsError(f"start_at_step {a} must be below end_at_step {self.end_at_step}")
        sl = Slice(b - a, a, n)
        if sl.whole:
            return sl
        if self.other_model is None:
            raise SearchSettingsError(
                f"the stage start_at_step {a} .. end_at_step {b} does not cover the {n}-step trajectory: connect "
                "other_model (the other expert, which runs the steps outside the stage)"
            )
        if 0 < a and b < n:
            raise SearchSettingsError(
                f"start_at_step {a} .. end_at_step {b}: a stage in the middle of the trajectory is not supported "
                "(the stage starts at step 0 or ends at the last step, as each of Wan 2.2's two experts does)"
            )
        if sl.steps < 2:
            raise SearchSettingsError(
                f"start_at_step {a} .. end_at_step {b} is one step: a stage's first step always computes, so there "
                "is nothing to search"
            )
        return sl

    def search_settings(self) -> SearchSettings:
        settings = SearchSettings(
            population=self.population,
            generations=self.generations or None,
            seed=self.search_seed,
            time_budget_s=self.time_budget_minutes * 60.0 if self.time_budget_minutes > 0 else None,
        )
        settings.validate()
        return settings

    def conditioning(self) -> tuple[list, list]:
        """(positive, negative) per calibration prompt: a connected positive is the one prompt, else each
        prompt line encoded; the negative is the connected one, the empty prompt, or the zeroed positive."""
        if self.positive is not None:
            positives = [self.positive]
        else:
            lines = prompt_lines(self.prompts, comments=True)
            if not lines:
                raise SearchSettingsError(
                    "no calibration prompts: write at least one prompt (one per line) and "
                    "connect a CLIP, or connect a positive CONDITIONING"
                )
            if self.clip is None:
                raise SearchSettingsError(
                    f"{len(lines)} prompt(s) given but no text encoder: connect the clip "
                    "input (or a positive CONDITIONING)"
                )
            positives = [encode(self.clip, ln) for ln in lines]
        if self.negative is not None:
            negatives = [self.negative] * len(positives)
        elif self.clip is not None:
            negatives = [encode(self.clip, "")] * len(positives)
        else:
            negatives = [zero_conditioning(p) for p in positives]
        return positives, negatives


def _cond_digest(conds) -> str:
    h = hashlib.sha256()
    for cond in conds:
        for t, extra in cond:
            h.update(t.detach().float().cpu().numpy().tobytes())
            p = extra.get("pooled_output")
            if p is not None:
                h.update(p.detach().float().cpu().numpy().tobytes())
            h.update(repr(sorted((k, v) for k, v in extra.items() if isinstance(v, (int, float, str)))).encode())
    return h.hexdigest()[:16]


def _model_digest(model) -> dict:
    """Cheap identity of the MODEL: its class, a few weights and the patches (LoRAs) on it."""
    dm = model.model.diffusion_model
    params = list(dm.parameters())
    probe = [float(p.detach().float().flatten()[:4096].sum()) for p in (params[:2] + params[-2:])]
    patches = sorted((k, len(v)) for k, v in getattr(model, "patches", {}).items())
    return {
        "class": type(dm).__name__,
        "n_params": len(params),
        "probe": [round(v, 6) for v in probe],
        "patches": fingerprint(patches),
    }


def calibration_sampler(
    inp: EvolveInputs, positives: list, negatives: list, seeds: list[int], stage: Slice | None = None
) -> Sampler:
    """The search's ``generate``: latents of every (prompt, seed) sample, described by everything they depend
    on (a resume with other inputs is refused). ``stage``: the steps the model runs (the other expert the rest)."""
    ratio = latent_ratio(inp.model)
    if inp.width % ratio or inp.height % ratio:
        raise EcadError(f"width {inp.width} and height {inp.height} must be multiples of {ratio} for this model")
    samples = [Sample(pos, neg, seed) for pos, neg in zip(positives, negatives) for seed in seeds]
    staged = stage is not None and not stage.whole
    gen = Sampler(
        inp.model,
        inp,
        samples,
        stage=stage if staged else None,
        other=inp.other_model if staged else None,
        step0_memo=not staged,  # candidates' step 0 served from the first run's (a stage's search: not tested)
    )
    gen.batch_size = samples_per_call(inp.model, gen.latent_shape)
    gen.description = {
        "model": _model_digest(inp.model),
        "conditioning": _cond_digest(positives + negatives),
        "samples": len(samples),
        "seeds": list(seeds),
        "steps": int(inp.steps),
        "cfg": float(inp.cfg),
        "sampler": inp.sampler_name,
        "scheduler": inp.scheduler,
        "size": [inp.width, inp.height],
        "batches": [len(g) for g in gen.batch_groups()],  # outputs agree across batchings only to float rounding
    }
    if staged and stage is not None:
        gen.description["stage"] = [stage.start, stage.start + stage.steps, stage.full]
        gen.description["other_model"] = _model_digest(inp.other_model)
    return gen


def samples_per_call(model, latent_shape, *, total_memory: float | None = None) -> int:
    """Calibration samples per sampler call: up to ``SAMPLES_PER_CALL``, fewer where ComfyUI's own estimate of a
    sample's activations (with its CFG pair) would not fit in half the device's memory beside the weights. From the
    device's total memory, not its free memory, so the batches (part of the search's identity) are the same in
    every session on this machine; on the CPU, ``SAMPLES_PER_CALL``."""
    import comfy.model_management as mm

    if total_memory is None:
        dev = mm.get_torch_device()
        if dev.type == "cpu":
            return SAMPLES_PER_CALL
        total_memory = mm.get_total_memory(dev)
    try:
        per = float(model.model.memory_required([2, *latent_shape[1:]]))
        room = 0.5 * float(total_memory) - float(model.model_size())
    except Exception as e:  # noqa: BLE001 - a model without ComfyUI's estimate: one at a time, as before
        log.warning("ECAD search: no memory estimate for this model (%s): one sample per sampler call", e)
        return 1
    return int(max(1, min(SAMPLES_PER_CALL, room // max(per, 1.0))))


class _Progress:
    """One ComfyUI progress bar over the whole search: generations, and evaluations inside each. After each
    generation: the current front as the bar's preview image, and an estimate of the total time (logged once
    after the first generation, and sent to the node as its progress text)."""

    SCALE = 1000

    def __init__(self, settings: SearchSettings, out: Path | None = None):
        generations = settings.generations
        self.total_gens = generations + 1 if generations else None  # None: bounded by time only
        self.budget_s = settings.time_budget_s
        self.per_gen = settings.per_generation()
        self.out = out
        self.bar = comfy.utils.ProgressBar((self.total_gens or 1) * self.SCALE)
        self.gen = 0
        self.search: SearchRun | None = None  # set once the search is built: its memo is the live front
        self.t0 = time.monotonic()
        self.evals0: int | None = None
        self.estimate_s: float | None = None
        self.first_estimate_s: float | None = None  # after this session's first generation
        self.text = ""

    def attach(self, search: SearchRun) -> None:
        self.search = search
        self.evals0 = len(search.state.memo)
        self.t0 = time.monotonic()  # from here: the reference run (once per search) and the evaluations

    def __call__(self, phase: str, done: int, total: int) -> None:
        preview = None
        if phase == "generation":
            self.gen = done
            frac = 0.0
            self._estimate()
            preview = self._preview()
        elif phase == "evaluate" and total:
            frac = done / total
        else:
            frac = 0.0
        # the server's progress hook raises InterruptProcessingException on Cancel: the search saves
        total = self.total_gens or self.gen + 1
        self.bar.update_absolute(int((self.gen + frac) * self.SCALE), total * self.SCALE, preview)

    def _estimate(self) -> None:
        """Total wall time: this session's time per evaluation x the evaluations still to come (at most
        ``per_gen`` per generation, fewer when offspring repeat), bounded by the time budget."""
        if self.search is None or self.evals0 is None:
            return
        elapsed = time.monotonic() - self.t0
        n = len(self.search.state.memo) - self.evals0
        if n <= 0:
            return
        left = (self.total_gens - self.gen) if self.total_gens else None
        total = elapsed + left * self.per_gen * elapsed / n if left is not None else math.inf
        if self.budget_s is not None:
            total = min(total, self.budget_s)
        first = self.estimate_s is None
        self.estimate_s = total if math.isfinite(total) else None
        hist = self.search.state.history[-1] if self.search.state.history else {}
        gens = f"{self.gen}/{self.total_gens}" if self.total_gens else f"{self.gen}"
        est = (
            f"about {total / 60:.1f} min in all, {max(0.0, total - elapsed) / 60:.1f} min left"
            if self.estimate_s
            else ""
        )
        self.text = (
            f"generation {gens} done: {len(self.search.state.memo)} schedules evaluated, front "
            f"{hist.get('front_size', 0)} points, hypervolume {hist.get('hypervolume', 0.0):.4f}; {est}"
        )
        if first:
            self.first_estimate_s = self.estimate_s
            log.info("ECAD search: %s (this session's first generation took %.1f s)", self.text, elapsed)
        _progress_text(self.text)

    def _preview(self):
        """The front so far as the progress bar's preview (ComfyUI's latent-preview tuple)."""
        if self.search is None or self.out is None:
            return None
        try:
            from PIL import Image

            from ..ecad_core.search.front import FrontPoint, pareto_indices, plot_front

            memo = self.search.state.memo
            F = np.array([v[:2] for v in memo.values()], np.float64).reshape(-1, 2)
            front = [FrontPoint(None, F[i, 0], F[i, 1], 0) for i in pareto_indices(F)]  # type: ignore[arg-type]
            path = plot_front(self.out / "front-live.png", front, F, title=self.text[:90] or None)
            img = Image.open(path)
            img.load()
            try:
                from latent_preview import MAX_PREVIEW_RESOLUTION as size
            except ImportError:
                size = 512
            return ("PNG", img.convert("RGB"), max(int(size), 640))
        except Exception as e:  # noqa: BLE001 - the live preview is a convenience; the search goes on
            log.warning("ECAD: cannot draw the live front (%s)", e)
            return None


def _progress_text(text: str) -> None:
    """``text`` under the running node (ComfyUI's progress text; nothing where this ComfyUI has none)."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        ctx = get_executing_context()
        if ctx is not None and getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.send_progress_text(text, ctx.node_id)
    except Exception as e:  # noqa: BLE001 - older ComfyUI or no server (in-process use)
        log.debug("ECAD: no progress text (%s)", e)


def _front_image(front_dir: Path | None) -> torch.Tensor:
    from PIL import Image

    png = front_dir / FRONT_PLOT if front_dir is not None else None
    if png is None or not png.is_file():
        return torch.zeros(1, 64, 64, 3)
    img = np.asarray(Image.open(png).convert("RGB"), np.float32) / 255.0
    return torch.from_numpy(img)[None]


class EvolveECADSchedule:
    DESCRIPTION = (
        "Finds cache schedules for YOUR model, prompts and sampler settings with ECAD's genetic "
        "search (NSGA-II): quality loss vs compute. Writes the Pareto front to "
        "models/ecad_schedules/<output_name>/front (listed by Apply ECAD Cache Schedule) and outputs "
        "the point picked for the target speedup. Cancel keeps a checkpoint; run again to resume."
    )
    CATEGORY = "ECAD"
    RETURN_TYPES = (SCHEDULE_TYPE, "IMAGE", "STRING")
    RETURN_NAMES = ("schedule", "front", "report")
    FUNCTION = "evolve"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "prompts": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": DEFAULT_PROMPTS,
                        "tooltip": "Calibration prompts, one per line (needs the clip input). Ignored when a "
                        "positive conditioning is connected.",
                    },
                ),
                "seeds_per_prompt": ("INT", {"default": 1, "min": 1, "max": 16}),
                "first_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "tooltip": "Noise seed of the first sample of each prompt; then +1, +2, ... "
                        "(after the largest seed comes 0).",
                    },
                ),
                **sampler_inputs(size=512, max_steps=1000),
                "population": ("INT", {"default": 24, "min": 2, "max": 1024}),
                "generations": (
                    "INT",
                    {
                        "default": 10,
                        "min": 0,
                        "max": 100000,
                        "tooltip": "Evolved generations after the initial population (0: no limit; "
                        "stop by the time budget).",
                    },
                ),
                "time_budget_minutes": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 100000.0,
                        "step": 1.0,
                        "tooltip": "Stop after this much wall time (0: no limit).",
                    },
                ),
                "quality_metric": (
                    list(FIDELITY_SPACES),
                    {
                        "default": FIDELITY_SPACES[0],
                        "tooltip": "Fidelity to full compute on the same prompts and seeds: 'latent' (relative "
                        "MSE of the latents, no VAE needed), 'ssim' or 'image-mse' (decoded with the "
                        "vae input).",
                    },
                ),
                "compute_objective": (
                    ["macs", "latency"],
                    {
                        "default": "macs",
                        "tooltip": "macs: analytic MACs of the loaded model. latency: each unit timed on "
                        "this device as the cache runs it, in one full-compute run (PixArt and "
                        "block-level models; "
                        "kept with the search for resumes).",
                    },
                ),
                "target_speedup": (
                    "FLOAT",
                    {
                        "default": 2.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.05,
                        "tooltip": "Picks the best-quality front point at least this fast (0: the knee of the front).",
                    },
                ),
                "output_name": ("STRING", {"default": "my-model-20steps"}),
                "search_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "resume": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Continue the search saved under this output name (off: start over)."},
                ),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Text encoder for the prompts."}),
                "positive": ("CONDITIONING", {"tooltip": "Use this conditioning as the one calibration prompt."}),
                "negative": ("CONDITIONING",),
                "vae": ("VAE", {"tooltip": "Needed by the image-space metrics (ssim, image-mse)."}),
                "warm_start": (
                    SCHEDULE_TYPE,
                    {"tooltip": "Put this schedule (e.g. a shipped preset) into the initial population."},
                ),
                # new inputs go last: saved workflows' widget values keep their meaning
                "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
                "other_model": ("MODEL",),
                "probe_seeds": (
                    "INT",
                    {
                        "default": -1,
                        "min": -1,
                        "max": 1000,
                        "tooltip": "Schedules from the unit probe first in the initial population: one full-compute "
                        "run measures how each unit's output changes between steps, and the best step rows for "
                        "each number of computed steps are derived from it without running them. -1: auto (steps "
                        "- 1 of them, at most population - 4; a resumed search keeps what it started with), 0: off. "
                        "Where the probe measures no unit (the model runs a path the pack cannot cache), the search "
                        "runs without them and the report says so.",
                    },
                ),
            },
        }

    def evolve(self, **inputs):
        return evolve(EvolveInputs(**inputs))


def evolve(inp: EvolveInputs):
    """The search the node runs: its result (schedule, front plot, report) and the node's UI."""
    model = inp.model
    refuse_applied_model(
        model,
        "Evolve ECAD Schedule",
        "the search scores each candidate against the model's full compute and applies the candidates itself",
    )
    adapter = adapter_for(model)
    out = search_dir(inp.output_name)
    stage = inp.stage()
    if stage.whole and inp.other_model is not None:
        log.warning("ECAD search: the stage is the whole trajectory: other_model is not used")
    if not stage.whole and inp.other_model.model_options.get("transformer_options", {}).get("ecad") is not None:
        raise EcadError(
            "other_model has an ECAD schedule applied (Apply ECAD Cache Schedule upstream): connect it without "
            "one, its steps run uncached in the search's reference and candidates alike"
        )
    positives, negatives = inp.conditioning()
    if inp.quality_metric in IMAGE_SPACES and inp.vae is None:
        raise SearchSettingsError(
            f"quality metric {inp.quality_metric!r} compares decoded images: connect a VAE or choose 'latent'"
        )
    settings = inp.search_settings()
    gen = calibration_sampler(
        inp, positives, negatives, sample_seeds(inp.first_seed, inp.seeds_per_prompt), stage=stage
    )
    decode = None
    if inp.vae is not None and inp.quality_metric in IMAGE_SPACES:
        vae = inp.vae

        def decode(latent):
            return vae.decode(latent[None])[0].movedim(-1, 0).clamp(0, 1)

    evaluator = LocalEvaluator(gen, decode=decode, space=inp.quality_metric)
    if not inp.resume and any((out / f).exists() for f in (CHECKPOINT_FILE, *LEGACY_CHECKPOINT_FILES)):
        log.info("ECAD search: resume is off: starting %s over", out)
        shutil.rmtree(out)
    probe = unit_changes_for(
        out,
        _probe_seeds(inp, out, stage),
        lambda: probe_unit_changes(gen, adapter.layout, inp.steps),
        host=f"ComfyUI {comfy_version()}, {adapter.kind}",
    )
    if probe.probe_seeds:
        settings = dataclasses.replace(settings, probe_seeds=probe.probe_seeds)
        settings.validate()
    if probe.probed:
        log.info(
            "ECAD search %r: unit probe ran (one full-compute run of %d sample(s))", inp.output_name, len(gen.samples)
        )
    if inp.compute_objective == "latency":
        if not stage.whole:
            raise SearchSettingsError(
                "compute_objective 'latency' times a whole run of the model: with start_at_step / end_at_step "
                "searching one stage, use 'macs'"
            )
        cost = _latency_cost(adapter, model, gen, inp.steps, out)
    else:
        cost = adapter.compute_cost(inp.steps, inp.height, inp.width, int(positives[0][0][0].shape[1]))
    # a stage's search varies only the rows it reads (the trajectory rule) and counts only their compute
    cost = cost if stage.whole else cost.rows(stage_rows(inp.steps, stage))
    warm = [inp.warm_start] if inp.warm_start is not None else []
    if inp.warm_start is not None and inp.warm_start.layout != adapter.layout:
        raise EcadError(
            f"warm_start schedule {inp.warm_start.name!r} has {inp.warm_start.layout.describe()}, the model "
            f"{adapter.layout.describe()}"
        )
    if warm and not stage.whole:  # the rows this stage reads of the warm start laid on the whole trajectory
        whole = remap_steps(warm[0], inp.steps)
        warm = [remap_steps(whole, stage.steps, start=stage.start, total=stage.full)]
    log.info(
        "ECAD search %r: %s, %d sample(s), %d steps%s, population %d, %d generation(s), cost: %s",
        inp.output_name,
        adapter.kind,
        len(gen.samples),
        inp.steps,
        "" if stage.whole else f" (the stage of steps {stage.start}..{stage.start + stage.steps - 1})",
        inp.population,
        inp.generations,
        cost.source,
    )
    progress = _Progress(settings, out)
    try:
        search = SearchRun(
            evaluator,
            adapter.layout,
            stage.steps,
            out,
            settings,
            cost=cost,
            warm_start=warm,
            warm_start_steps="remap",
            model=adapter.arch_hint,
            progress=progress,
            should_stop=comfy.model_management.processing_interrupted,
            resume=True,
            save_as=None if stage.whole else (lambda s: embed_stage(s, stage)),
            unit_changes=probe.changes,
        )
        progress.attach(search)
        result = search.run()
    except CheckpointError as e:
        raise CheckpointError(
            f"{e} (or turn 'resume' off: that deletes the folder "
            f"models/{library.FOLDER_NAME}/{inp.output_name} and starts over)"
        ) from None
    # a cancel seen between evaluations: the checkpoint is saved; surface it as ComfyUI's interruption
    # (not a result, which ComfyUI would cache and so never resume)
    comfy.model_management.throw_exception_if_processing_interrupted()
    chosen = pick(result.front, target_speedup=inp.target_speedup if inp.target_speedup > 0 else None)
    report = _report(inp.output_name, result, chosen, evaluator)
    if not stage.whole:
        report += (
            f"\nstage: steps {stage.start}..{stage.start + stage.steps - 1} of {stage.full} (schedule rows "
            f"{stage.start}..{stage.start + stage.steps - 1}; the others recompute); other_model: "
            f"{gen.other_runs} sampler call(s), uncached; the steps before the stage ran once per sample group"
        )
    if gen.step0_memo is not None and gen.step0_memo.shared:
        report += f"\nstep 0 served from the first run of its batch: {gen.step0_memo.shared} model call(s) saved"
    if settings.probe_seeds:
        report += f"\nunit probe: {settings.probe_seeds} seed(s) from its step rows (" + (
            "probed here: one full-compute run)" if probe.probed else "read from the search folder)"
        )
    elif probe.skipped:
        report += f"\nunit probe skipped: {probe.skipped}; the search ran without probe seeds"
    if progress.first_estimate_s is not None:
        report += f"\nestimated after the first generation: {progress.first_estimate_s / 60:.1f} min in all"
    log.info("%s", report)
    img = _front_image(result.front_dir)
    ui = {"text": [report]}
    try:
        import nodes as comfy_nodes  # ComfyUI's PreviewImage shows the plot on the node

        ui.update(comfy_nodes.PreviewImage().save_images(img, filename_prefix="ecad_front")["ui"])
        # the picked point's schedule picture beside the plot
        picture = schedule_image(chosen.schedule)
        ui["images"] += comfy_nodes.PreviewImage().save_images(picture, filename_prefix="ecad_picked")["ui"]["images"]
    except Exception as e:  # noqa: BLE001 - the preview is a convenience; outputs still flow
        log.warning("ECAD: cannot preview the front plot (%s)", e)
    return {"ui": ui, "result": (chosen.schedule, img, report)}


def _probe_seeds(inp: EvolveInputs, out: Path, stage: Slice) -> int:
    """The probe seeds of this search (``probe_seeds`` -1: auto); a stage's search takes none (the probe
    measures whole runs)."""
    if not stage.whole:
        if parse_probe_seeds(inp.probe_seeds, "probe_seeds"):
            raise SearchSettingsError(
                "probe_seeds: the unit probe measures a whole run of the model; with start_at_step / end_at_step "
                "searching one stage, set probe_seeds to 0 or -1"
            )
        return 0
    return resolve_probe_seeds(inp.probe_seeds, out, inp.population, stage.steps, input_name="probe_seeds")


def _latency_cost(adapter, model, gen, steps, out: Path) -> ComputeCost:
    """Unit times measured on this device (saved in the search folder: a resume must see the same costs)."""
    path = out / LATENCY_COST_FILE
    if path.is_file():
        saved = ComputeCost.load(path)
        if saved.unit.shape == (steps, adapter.layout.n_units):
            return saved
    if not adapter.units_timeable:
        raise SearchSettingsError(
            f"the latency objective times each unit, but the units of {adapter.kind} "
            f"are computed inside ComfyUI's own blocks: use compute_objective 'macs'"
        )
    full = Schedule.full(adapter.layout, steps, name="all-recompute")
    cost = measured_latency_cost(
        model.model.diffusion_model, adapter.layout, steps, lambda: gen(None), run_patched=lambda: gen(full)
    )
    out.mkdir(parents=True, exist_ok=True)
    cost.save(path)
    return cost


def _report(name, result, chosen, evaluator) -> str:
    lines = [
        f"ECAD search {name!r}: generation {result.generation}, {result.evaluations} schedules evaluated"
        f" ({evaluator.n_generate} sampling runs here), stopped: {result.stopped}"
        + (f", resumed from generation {result.resumed_from}" if result.resumed_from is not None else ""),
        f"front: {len(result.front)} point(s) in {result.front_dir}, hypervolume {result.hypervolume:.4f}",
        f"picked: {chosen.schedule.name} - expected {chosen.expected_speedup:.2f}x, quality loss "
        f"{chosen.quality_loss:.5f}",
    ]
    for p in sorted(result.front, key=lambda p: p.compute_fraction):
        lines.append(
            f"  {p.expected_speedup:5.2f}x  loss {p.quality_loss:.5f}  {p.path.name if p.path else p.schedule.name}"
        )
    return "\n".join(lines)
