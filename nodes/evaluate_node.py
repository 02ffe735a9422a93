"""Evaluate ECAD Schedule: the ``eval`` command inside a workflow, for a ComfyUI MODEL.

Samples every prompt x seed without a cache and with the schedule (same
noise), times both, and scores the schedule with ``ecad_core.evaluation``
(the metrics the search uses). Text comes from a CLIP (text encoder) input,
one encoding per prompt line; without one, a connected CONDITIONING is used
for every sample and the prompt lines only label the images (for CLIP score
and ImageReward). Without a VAE the outputs are latents: fidelity is the
latent relative MSE and the image metrics are skipped with a note.

Writes ``<prefix>_NNNNN_eval.{json,csv,md}`` and ``<prefix>_NNNNN_grid.png``
to ComfyUI's output folder. Metric weight paths that are not absolute are
looked up in ``models/ecad_metrics``, a relative FID reference folder in the
input folder. Every path must resolve (``..`` and symlinks followed) inside
ComfyUI's model folders (extra_model_paths.yaml included), input or output
folder, so that a workflow from someone else cannot make the server read
other files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.utils
import folder_paths

from ..ecad_core.errors import EcadError
from ..ecad_core.evaluation import (
    MetricSuite,
    MetricWeights,
    comparison_grid,
    cost_function,
    run_evaluation,
    save_png,
    to_markdown,
    write_reports,
)
from ..ecad_core.schedule import Schedule
from . import library
from .adapters import adapter_for
from .library import SCHEDULE_TYPE
from .patching import refuse_applied_model
from .sampling import Sample, Sampler, SamplerSettings, encode, prompt_lines, sampler_inputs, zero_conditioning

log = logging.getLogger("ecad")
METRICS_DIR = "ecad_metrics"


def _allowed_roots() -> list[Path]:
    """ComfyUI's model folders (all kinds, extra_model_paths.yaml included), its input and output folder."""
    roots = [folder_paths.models_dir, folder_paths.get_input_directory(), folder_paths.get_output_directory()]
    for kind, (paths, _) in folder_paths.folder_names_and_paths.items():
        if kind != "custom_nodes":  # code, not models
            roots += list(paths)
    return [Path(r).resolve() for r in roots]


def _checked_path(value: str, input_name: str, relative_to: str) -> str | None:
    """``value`` resolved (relative: from ``relative_to``), if inside ComfyUI's allowed folders; None if empty."""
    value = (value or "").strip()
    if not value:
        return None
    p = Path(os.path.expanduser(value))
    real = (p if p.is_absolute() else Path(relative_to) / p).resolve()  # ".." and symlinks followed
    if not any(real == r or real.is_relative_to(r) for r in _allowed_roots()):
        raise EcadError(
            f"Evaluate ECAD Schedule: {input_name} {value!r} resolves to {real}, outside ComfyUI's models, input "
            f"and output folders; the node reads only files there (a shared workflow must not read other files "
            f"on the server). Put it in models/{METRICS_DIR} (weights) or the input folder (FID reference), or "
            f"add its folder to extra_model_paths.yaml"
        )
    return str(real)


def _weights_path(value: str, input_name: str) -> str | None:
    return _checked_path(value, input_name, os.path.join(folder_paths.models_dir, METRICS_DIR))


@dataclass(frozen=True)
class EvaluateInputs(SamplerSettings):
    """The node's inputs, by their names in ``INPUT_TYPES`` (the names saved workflows hold)."""

    model: Any
    preset: str
    prompts: str
    seed: int
    seeds_per_prompt: int
    metrics: str
    grid_rows: int
    filename_prefix: str
    schedule: Schedule | None = None
    clip: Any = None
    positive: Any = None
    negative: Any = None
    vae: Any = None
    clip_score_weights: str = ""
    imagereward_weights: str = ""
    lpips_weights: str = ""
    inception_weights: str = ""
    fid_reference_folder: str = ""
    warmup: bool = True
    offload_cache_to_cpu: bool = False

    def weights(self) -> MetricWeights:
        return MetricWeights(
            clip=_weights_path(self.clip_score_weights, "clip_score_weights"),
            imagereward=_weights_path(self.imagereward_weights, "imagereward_weights"),
            lpips=_weights_path(self.lpips_weights, "lpips_weights"),
            inception=_weights_path(self.inception_weights, "inception_weights"),
        )

    def samples(self) -> tuple[list[Sample], list[str | None], list[int]]:
        """(samples, the prompt of each, the seeds per prompt). With a CLIP every prompt line is encoded and
        sampled with the same seeds, as the eval command does; else the connected positive is used for every
        sample, the lines only label them, and the seeds run on across all samples (or every prompt line
        would repeat one image)."""
        lines: list[str | None] = list(prompt_lines(self.prompts))
        negative = self.negative
        if self.clip is not None:
            if not lines:
                raise EcadError("Evaluate ECAD Schedule: a CLIP input is connected but no prompts are given")
            encoded = [encode(self.clip, p) for p in lines]
            if negative is None:
                negative = encode(self.clip, "")
        elif self.positive is not None:
            lines = lines or [None]
            encoded = [self.positive] * len(lines)
            if negative is None:
                negative = zero_conditioning(self.positive)
        else:
            raise EcadError("Evaluate ECAD Schedule: connect a CLIP (text encoder) or a positive CONDITIONING")
        seeds = [self.seed + j for j in range(self.seeds_per_prompt)]
        conds = [c for c in encoded for _ in seeds]
        prompts = [p for p in lines for _ in seeds]
        if self.clip is not None:
            sample_seeds = [s for _ in lines for s in seeds]
        else:
            sample_seeds = [self.seed + i for i in range(len(conds))]
        return [Sample(c, negative, s) for c, s in zip(conds, sample_seeds)], prompts, seeds


class EvaluateECADSchedule:
    DESCRIPTION = (
        "Compares a schedule with no cache on the same prompts and seeds: latency per image and MACs "
        "beside PSNR/SSIM/LPIPS to full compute, CLIP score, ImageReward and FID. Outputs the table, a "
        "no cache | schedule | difference grid, and writes JSON/CSV/markdown to the output folder. "
        "Metrics without local weights are skipped with a note."
    )
    CATEGORY = "ECAD"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("table", "grid")
    FUNCTION = "evaluate"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        opts = library.options()
        weights_tip = (
            "Path relative to models/ecad_metrics, or absolute inside ComfyUI's models, input or "
            "output folder (other files on the server are refused); empty: the metric is skipped."
        )
        return {
            "required": {
                "model": ("MODEL",),
                "preset": (
                    opts,
                    {
                        "default": opts[0] if opts else "",
                        "tooltip": "Schedule to evaluate; a connected schedule input wins.",
                    },
                ),
                "prompts": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "a red fox in the snow\na lighthouse at dusk",
                        "tooltip": "One prompt per line. Without a CLIP input they only label "
                        "the samples: the positive conditioning is used for all, "
                        "with seeds seed, seed+1, ... across all samples.",
                    },
                ),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "seeds_per_prompt": (
                    "INT",
                    {
                        "default": 1,
                        "min": 1,
                        "max": 64,
                        "tooltip": "Images per prompt, seeds seed, seed+1, ... (with CLIP: "
                        "the same seeds for every prompt).",
                    },
                ),
                **sampler_inputs(size=256, max_steps=10000),
                "metrics": (
                    "STRING",
                    {
                        "default": "all",
                        "tooltip": "all, or a comma-separated subset of psnr, ssim, lpips, clip, imagereward, fid.",
                    },
                ),
                "grid_rows": ("INT", {"default": 4, "min": 1, "max": 64}),
                "filename_prefix": ("STRING", {"default": "ecad_eval/eval"}),
            },
            "optional": {
                "schedule": (SCHEDULE_TYPE, {"tooltip": "From Load ECAD Schedule; overrides the preset."}),
                "clip": ("CLIP", {"tooltip": "Text encoder: each prompt line is encoded."}),
                "positive": ("CONDITIONING", {"tooltip": "Used for every sample when no CLIP is connected."}),
                "negative": ("CONDITIONING", {"tooltip": "Default: the empty prompt (CLIP) or zeroed positive."}),
                "vae": ("VAE", {"tooltip": "Decodes the samples; without it only latent fidelity is measured."}),
                "clip_score_weights": (
                    "STRING",
                    {"default": "", "tooltip": "transformers CLIPModel folder. " + weights_tip},
                ),
                "imagereward_weights": ("STRING", {"default": "", "tooltip": "ImageReward.pt. " + weights_tip}),
                "lpips_weights": (
                    "STRING",
                    {"default": "", "tooltip": "Folder with alex.pth and alexnet-owt-7be5be79.pth. " + weights_tip},
                ),
                "inception_weights": (
                    "STRING",
                    {"default": "", "tooltip": "pt_inception-2015-12-05-6726825d.pth (FID). " + weights_tip},
                ),
                "fid_reference_folder": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Folder of reference images for a "
                        "second FID column: relative to the input folder, or absolute "
                        "inside ComfyUI's input, output or models folders.",
                    },
                ),
                "warmup": ("BOOLEAN", {"default": True, "tooltip": "One untimed sample before each timed set."}),
                "offload_cache_to_cpu": ("BOOLEAN", {"default": False}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, preset):
        if library.known(preset):
            return True
        return f"ECAD preset {library.key_of(preset)!r} not found (shipped presets or models/ecad_schedules)"

    @classmethod
    def IS_CHANGED(cls, preset, **_):
        # the preset file's content hash: an edited schedule file re-runs the evaluation (a connected
        # schedule input is keyed by its own node)
        return library.fingerprint(preset)

    def evaluate(self, **inputs):
        return evaluate(EvaluateInputs(**inputs))


def evaluate(inp: EvaluateInputs):
    """The evaluation the node runs: its table, the comparison grid, the report files and the node's UI."""
    # paths first: refused before anything is loaded or sampled
    fid_ref = _checked_path(inp.fid_reference_folder, "fid_reference_folder", folder_paths.get_input_directory())
    weights = inp.weights()
    model = inp.model
    refuse_applied_model(
        model, "Evaluate ECAD Schedule", "the node applies the schedule itself and compares it with no cache"
    )
    schedule = inp.schedule if inp.schedule is not None else library.resolve(inp.preset)
    samples, sample_prompts, seeds = inp.samples()
    suite = MetricSuite.load(inp.metrics, weights, fid_reference=fid_ref)
    adapter = adapter_for(model)
    schedule.check_fits(adapter.layout, adapter.kind)
    # the search's cost model, so reported MACs match the search's compute objective
    cost = adapter.compute_cost(inp.steps, inp.height, inp.width, int(samples[0].positive[0][0].shape[1]))
    pbar = comfy.utils.ProgressBar(2 * len(samples))
    vae = inp.vae
    gen = Sampler(
        model,
        inp,
        samples,
        offload=inp.offload_cache_to_cpu,
        decode=None if vae is None else (lambda out: vae.decode(out)[0].permute(2, 0, 1).float().cpu()),
        preview=True,
        on_sample=lambda: pbar.update(1),
    )
    settings = {
        "schedule": schedule.name,
        "steps": inp.steps,
        "cfg": inp.cfg,
        "sampler": inp.sampler_name,
        "scheduler": inp.scheduler,
        "width": inp.width,
        "height": inp.height,
        "seeds": seeds,
        "text": "clip" if inp.clip is not None else "conditioning",
        "warmup": inp.warmup,
        "weights": dict(vars(weights).items()),
        "fid_reference": fid_ref,
    }
    res = run_evaluation(
        gen,
        [(schedule.name, schedule)],
        suite,
        sample_prompts=sample_prompts,
        sample_seeds=[s.seed for s in samples],
        cost=cost_function(cost),
        warmup=inp.warmup,
        kind="image" if vae is not None else "latent",
        settings=settings,
        keep_outputs=inp.grid_rows,
    )
    table = to_markdown(res)
    grid = comparison_grid(res.rows[0].outputs, [(schedule.name, res.rows[1].outputs)], rows=inp.grid_rows)
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        inp.filename_prefix, folder_paths.get_output_directory(), grid.shape[1], grid.shape[0]
    )
    stem = f"{name}_{counter:05}_"
    write_reports(res, folder, stem=stem + "eval")
    save_png(grid, Path(folder) / f"{stem}grid.png")
    log.info("ECAD eval of %r:\n%s", schedule.name, table)
    ui = {"images": [{"filename": f"{stem}grid.png", "subfolder": subfolder, "type": "output"}], "text": [table]}
    return {"ui": ui, "result": (table, grid[None])}
