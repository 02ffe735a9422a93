"""The pack's nodes: Apply ECAD Cache Schedule, Load ECAD Schedule, Preview ECAD Schedule.

Written against ComfyUI's classic (V1) node API rather than V3 (``comfy_api.latest``):
in ComfyUI v0.3.75 ``comfy_api.latest`` is marked unstable (``STABLE = False``),
while V1 is what every release loads the same way; V1's ``VALIDATE_INPUTS`` also
lets the preset dropdown accept a saved workflow's value after the label's
speedup text changes, and resolve it by its stable key.
"""

from __future__ import annotations

import logging
import math

import comfy.patcher_extension
import numpy as np
import torch

from ..ecad_core import costs
from ..ecad_core.engine import CacheEngine
from ..ecad_core.errors import EcadError
from ..ecad_core.schedule import Schedule
from . import library
from .comfy_adapters import adapter_for
from .comfy_graphs import install_graphs
from .comfy_run import ComfyRun

log = logging.getLogger("ecad")
SCHEDULE_TYPE = "ECAD_SCHEDULE"
OFF = "off"


def _expected_speedup(s: Schedule, arch: str | None) -> float | None:
    res = (s.provenance or {}).get("resolution")
    try:
        if arch and isinstance(res, list) and len(res) == 2:
            return costs.expected_speedup(s, arch, int(res[0]), int(res[1]))
    except Exception:  # noqa: BLE001 - cost model does not cover this model/size: fall back to stored numbers
        pass
    return library.speedup_of(s)


def patch_model(model, schedule: Schedule, offload_to_cpu: bool = False, cuda_graphs: bool = False):
    """A patched clone of ``model`` running ``schedule``; raises a clear error if it does not fit."""
    adapter = adapter_for(model)
    schedule.check_fits(adapter.layout, adapter.kind)
    if schedule.model and adapter.arch_hint and schedule.model.split("-")[0] != adapter.arch_hint.split("-")[0]:
        raise EcadError(f"schedule {schedule.name!r} is for {schedule.model}, but the model is {adapter.kind}")
    from .comfy_adapters import remove_earlier_apply

    m = model.clone()
    # a later Apply replaces an earlier one: its hooks, wrappers, run and CUDA-graph forward go
    earlier = remove_earlier_apply(m)
    if earlier is not None:
        log.info("ECAD: schedule %r replaces %r from an earlier Apply ECAD node", schedule.name, earlier)
    engine = CacheEngine(schedule, offload_device="cpu" if offload_to_cpu else None)
    run = ComfyRun(engine, label=schedule.name, expected_speedup=_expected_speedup(schedule, adapter.arch_hint))
    adapter.install(m, run)
    if cuda_graphs:
        if offload_to_cpu:
            raise EcadError(
                "ECAD: CUDA graphs and offloading the cache to the CPU exclude each other (a graph "
                "cannot copy between devices); turn one of them off"
            )
        install_graphs(m, run, adapter)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "ecad", run.outer_sample_wrapper)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "ecad", run.apply_model_wrapper)
    m.model_options["transformer_options"]["ecad"] = run
    log.info(
        "ECAD: applied schedule %r (%d steps, %.1f%% of units recomputed) to %s",
        schedule.name,
        schedule.steps,
        100 * schedule.recompute_fraction(),
        adapter.kind,
    )
    return m


def refuse_applied_model(model, node: str, why: str) -> None:
    """Evaluate and Evolve compare schedules with the model's full compute: a MODEL that went through
    Apply ECAD would run that schedule in their "no cache" reference, so they refuse it."""
    run = model.model_options.get("transformer_options", {}).get("ecad")
    if run is not None:
        raise EcadError(
            f"{node}: the MODEL already has an ECAD schedule applied ({getattr(run, 'label', '?')!r}, "
            f"by Apply ECAD Cache Schedule upstream); connect the model without it: {why}"
        )


class ApplyECADSchedule:
    DESCRIPTION = (
        "Makes a diffusion transformer (PixArt-α/Σ, FLUX.1, SD3, Wan, ...) faster by reusing "
        "component outputs between sampling steps, following an ECAD cache schedule."
    )
    CATEGORY = "ECAD"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "preset": (
                    [OFF] + library.options(),
                    {
                        "default": OFF,
                        "tooltip": "A shipped ECAD preset or one of your schedules (models/ecad_schedules). "
                        "'off' passes the model through. A connected schedule input wins.",
                    },
                ),
                "offload_cache_to_cpu": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Keep cached outputs in system RAM (less VRAM, some transfer time)."},
                ),
            },
            "optional": {
                "schedule": (SCHEDULE_TYPE, {"tooltip": "From Load ECAD Schedule or Evolve Schedule."}),
                "cuda_graphs": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "PixArt on an NVIDIA GPU: capture each step once as a CUDA graph and replay it "
                        "(same image, much faster at small sizes). Falls back to normal execution, "
                        "with the reason in the log, where it cannot be used (CPU, low-VRAM loading, "
                        "weight casting, LoRA applied on the fly, other models). Keeps the cache "
                        "between runs.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, preset):
        # Accept values whose speedup text changed since the workflow was saved: match by key.
        if preset == OFF:
            return True
        keys = {library.key_of(o) for o in library.options()}
        if library.key_of(preset) in keys:
            return True
        return f"ECAD preset {library.key_of(preset)!r} not found (shipped presets or models/ecad_schedules)"

    @classmethod
    def IS_CHANGED(cls, preset, **_):
        # the file's content hash: an edited schedule file re-runs the node (a connected schedule
        # input is keyed by its own node)
        return OFF if preset == OFF else library.fingerprint(preset)

    def apply(self, model, preset, offload_cache_to_cpu=False, schedule=None, cuda_graphs=False):
        if schedule is None:
            if preset == OFF:
                return (model,)
            schedule = library.resolve(preset)
        return (patch_model(model, schedule, offload_cache_to_cpu, cuda_graphs),)


class LoadECADSchedule:
    DESCRIPTION = "Loads an ECAD schedule file (shipped preset or models/ecad_schedules)."
    CATEGORY = "ECAD"
    RETURN_TYPES = (SCHEDULE_TYPE, "STRING")
    RETURN_NAMES = ("schedule", "info")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        opts = library.options()
        return {"required": {"schedule_file": (opts, {"default": opts[0] if opts else ""})}}

    @classmethod
    def VALIDATE_INPUTS(cls, schedule_file):
        if library.key_of(schedule_file) in {library.key_of(o) for o in library.options()}:
            return True
        return f"ECAD schedule {library.key_of(schedule_file)!r} not found"

    @classmethod
    def IS_CHANGED(cls, schedule_file):
        return library.fingerprint(schedule_file)  # content hash: an edited file is re-read

    def load(self, schedule_file):
        s = library.resolve(schedule_file)
        return (s, _info_text(s))


def _info_text(s: Schedule) -> str:
    info = s.summary()
    sp = library.speedup_of(s)
    lines = [
        f"{s.name} ({library.PRETTY.get(s.model or '', s.family)})",
        f"{info['steps']} steps, {s.layout.describe()}",
        f"recomputed: {100 * info['recompute_fraction']:.1f}% of unit-steps",
    ]
    if sp:
        lines.append(f"speedup: {sp:.2f}x")
    return "\n".join(lines)


# Colour of a recomputed cell per component (reused cells are dark).
_COLORS = {
    "attn1": (0.95, 0.55, 0.2),
    "attn2": (0.3, 0.7, 0.95),
    "ff": (0.55, 0.85, 0.35),
    "full_attn": (0.95, 0.55, 0.2),
    "full_ff": (0.55, 0.85, 0.35),
    "full_ff_context": (0.3, 0.7, 0.95),
    "single_attn": (0.95, 0.4, 0.5),
    "single_proj_mlp": (0.8, 0.75, 0.3),
    "single_proj_out": (0.6, 0.5, 0.95),
    "block": (0.9, 0.9, 0.9),
}


# Longest side of the preview in pixels: a bigger schedule is drawn with smaller cells, then summarised.
MAX_PREVIEW_SIDE = 1024


def schedule_image(s: Schedule, cell: int = 4, max_side: int = MAX_PREVIEW_SIDE) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: one row per step, one column per unit; block boundaries as thin gaps.

    Cells are ``cell`` pixels while that fits in ``max_side``, else fewer (per axis); with more
    steps or units than ``max_side``, each pixel is the mean colour of a bin of steps x units."""
    eff = s.effective_bits()
    comps = [c for _, c in s.layout.iter_units()]
    col = np.array([_COLORS.get(c, (0.9, 0.9, 0.9)) for c in comps], np.float32)  # [U,3]
    grid = np.where(eff[..., None], col[None], np.float32(0.12))  # [S,U,3]
    fy, fx = (math.ceil(n / max_side) for n in grid.shape[:2])
    if fy > 1 or fx > 1:
        return torch.from_numpy(np.ascontiguousarray(_bin_mean(_bin_mean(grid, fy, 0), fx, 1)))[None]
    cy, cx = (max(1, min(cell, max_side // n)) for n in grid.shape[:2])
    img = np.repeat(np.repeat(grid, cy, axis=0), cx, axis=1)
    if cx > 1:  # darken the last column of each block for readability (not with 1-pixel cells)
        for _, sl in s.layout.block_slices():
            img[:, sl.stop * cx - 1, :] *= 0.5
    return torch.from_numpy(np.ascontiguousarray(img))[None]


def _bin_mean(a: np.ndarray, f: int, axis: int) -> np.ndarray:
    if f == 1:
        return a
    starts = np.arange(0, a.shape[axis], f)
    sizes = np.diff(np.append(starts, a.shape[axis])).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = len(sizes)
    return np.add.reduceat(a, starts, axis=axis) / sizes.reshape(shape)


def _picture_note(s: Schedule, max_side: int = MAX_PREVIEW_SIDE) -> str | None:
    fy, fx = math.ceil(s.steps / max_side), math.ceil(s.layout.n_units / max_side)
    if fy > 1 or fx > 1:
        return f"picture summarised: each pixel averages {fy} step(s) x {fx} unit(s)"
    return None


class PreviewECADSchedule:
    DESCRIPTION = "Shows a schedule as a steps x units grid (bright = recomputed, dark = reused) with statistics."
    CATEGORY = "ECAD"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "info")
    FUNCTION = "preview"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"schedule": (SCHEDULE_TYPE,)}}

    def preview(self, schedule):
        import nodes as comfy_nodes  # ComfyUI's own PreviewImage saves to temp and shows it

        img = schedule_image(schedule)
        note = _picture_note(schedule)
        text = _info_text(schedule) + (f"\n{note}" if note else "")
        ui = comfy_nodes.PreviewImage().save_images(img, filename_prefix="ecad_schedule")["ui"]
        ui["text"] = [text]
        return {"ui": ui, "result": (img, text)}
