"""Apply ECAD Cache Schedule: a MODEL in, a patched clone out (``patching.patch_model``).

The pack's nodes are written against ComfyUI's classic (V1) node API rather than V3 (``comfy_api.latest``):
in ComfyUI v0.3.75 ``comfy_api.latest`` is marked unstable (``STABLE = False``), while V1 is what every release
loads the same way; V1's ``VALIDATE_INPUTS`` also lets the preset dropdown accept a saved workflow's value after
the label's speedup text changes, and resolve it by its stable key.
"""

from __future__ import annotations

from . import library, run_report
from .adapters import adapter_for
from .library import EMBED_INPUT, SCHEDULE_TYPE
from .patching import WRAPPER_KEY, patch_model

OFF = "off"


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
                EMBED_INPUT: library.embed_input_spec(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, preset, embedded_schedule=""):
        # Accept values whose speedup text changed since the workflow was saved: match by key; a schedule
        # embedded in the workflow stands in for a missing file.
        if preset == OFF:
            return True
        return library.validate(preset, embedded_schedule, "ECAD preset")

    @classmethod
    def IS_CHANGED(cls, preset, embedded_schedule="", **_):
        # the file's content hash: an edited schedule file re-runs the node (a connected schedule
        # input is keyed by its own node)
        return OFF if preset == OFF else library.fingerprint_with(preset, embedded_schedule)

    def apply(self, model, preset, offload_cache_to_cpu=False, schedule=None, cuda_graphs=False, embedded_schedule=""):
        if schedule is None:
            if preset == OFF:
                return (run_report.timing_clone(model),)  # times the run: the baseline of the measured speedup
            schedule = library.resolve_with(preset, embedded_schedule)
        m = patch_model(model, schedule, offload_cache_to_cpu, cuda_graphs)
        run_report.attach(m, schedule, run_report.model_arch(adapter_for(model)), WRAPPER_KEY)
        return (m,)
