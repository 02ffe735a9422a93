"""The nodes' help inside ComfyUI: the tooltips of inputs a node module declares without one, and every output's
tooltip (OUTPUT_TOOLTIPS). The longer help is web/docs/<NodeName>.md (ComfyUI's node-docs panel).

Kept in one table so that the shared sampler widgets (``sampling.sampler_inputs``) get one text each;
``annotate`` fills them in when the pack registers its nodes, never replacing a tooltip a node declares.
"""

from __future__ import annotations

SAMPLER = {
    "steps": "Sampling steps, as in your KSampler. A schedule fits one step count; at another it is remapped.",
    "cfg": "Classifier-free guidance scale, as in your KSampler.",
    "sampler_name": "Sampler, as in your KSampler.",
    "scheduler": "Noise scheduler, as in your KSampler.",
    "width": "Image width in pixels, as you will generate.",
    "height": "Image height in pixels, as you will generate.",
}

INPUT_TOOLTIPS: dict[str, dict[str, str]] = {
    "ApplyECADSchedule": {
        "model": "The diffusion model (PixArt-α/Σ, FLUX.1, SD3, Wan and other DiTs) to run with the cache.",
    },
    "LoadECADSchedule": {
        "schedule_file": "A shipped preset or one of your schedules (models/ecad_schedules). The label reads "
        "'<name> · <model> · <speedup>'; see the node's help for what the speedup means.",
    },
    "PreviewECADSchedule": {
        "schedule": "The schedule to draw: one row per step, one column per unit; bright = recomputed, dark = reused.",
    },
    "EvolveECADSchedule": {
        "model": "The model to search schedules for (without a schedule applied).",
        "seeds_per_prompt": "Samples per calibration prompt (seeds first_seed, first_seed+1, ...). More: a "
        "steadier quality estimate, slower search.",
        **SAMPLER,
        "population": "Schedules per generation of the genetic search (ECAD used 24-72).",
        "output_name": "Folder under models/ecad_schedules for the checkpoint and the front; the same name "
        "resumes the search.",
        "search_seed": "Seed of the genetic search itself (not of the images).",
        "negative": "Negative conditioning for every sample (default: the empty prompt, or the zeroed positive).",
        "start_at_step": "First step the model runs, as its KSamplerAdvanced's start_at_step (Wan 2.2's low-noise "
        "expert: where the high-noise one stops). The search varies only this stage's schedule rows.",
        "end_at_step": "Step the model stops at, as its KSamplerAdvanced's end_at_step (10000: the last step). "
        "Defaults: the whole trajectory.",
        "other_model": "The other expert (e.g. Wan 2.2's high-noise model), run uncached for the steps outside "
        "start_at_step .. end_at_step; needed when the stage is not the whole trajectory.",
    },
    "EvaluateECADSchedule": {
        "model": "The model to evaluate on (without a schedule applied): each sample runs with and without "
        "the schedule.",
        "seed": "Noise seed of the first sample; then seed+1, seed+2, ...",
        **SAMPLER,
        "grid_rows": "Rows of the comparison grid image.",
        "filename_prefix": "Where the table, reports and grid are saved, under ComfyUI's output folder.",
        "offload_cache_to_cpu": "Keep cached outputs in system RAM (less VRAM, some transfer time).",
    },
}

OUTPUT_TOOLTIPS: dict[str, tuple[str, ...]] = {
    "ApplyECADSchedule": (
        "The model with the cache schedule applied: connect it to your KSampler. The run's statistics show "
        "as a message in the UI and in the log.",
    ),
    "LoadECADSchedule": (
        "The schedule, for Apply, Preview or Evaluate.",
        "What the schedule is: model, steps, units, share recomputed, speedup.",
    ),
    "PreviewECADSchedule": ("The schedule drawn as an image.", "The schedule's statistics as text."),
    "EvolveECADSchedule": (
        "The front point picked for target_speedup: connect it to Apply's schedule input.",
        "The Pareto front (quality loss vs compute) as a plot.",
        "What the search did and every front point with its expected speedup and quality loss.",
    ),
    "EvaluateECADSchedule": (
        "The metrics table (schedule vs no cache) as text.",
        "Samples without and with the schedule, side by side.",
    ),
}


def _with_tooltips(types: dict, tips: dict[str, str]) -> dict:
    out = {}
    for section, inputs in types.items():
        if not isinstance(inputs, dict) or section == "hidden":
            out[section] = inputs
            continue
        filled = {}
        for name, spec in inputs.items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else None
            if name in tips and (len(spec) == 1 or opts is not None) and not (opts or {}).get("tooltip"):
                spec = (spec[0], {**(opts or {}), "tooltip": tips[name]}, *spec[2:])
            filled[name] = spec
        out[section] = filled
    return out


def annotate(classes: dict[str, type]) -> None:
    """Gives each node class the tooltips of the tables above (once)."""
    for name, cls in classes.items():
        if name in OUTPUT_TOOLTIPS and "OUTPUT_TOOLTIPS" not in cls.__dict__:
            cls.OUTPUT_TOOLTIPS = OUTPUT_TOOLTIPS[name]
        tips = INPUT_TOOLTIPS.get(name)
        if not tips or getattr(cls.INPUT_TYPES, "__ecad_help__", False):
            continue
        declared = cls.INPUT_TYPES

        def input_types(klass, _declared=declared, _tips=tips):
            return _with_tooltips(_declared(), _tips)

        input_types.__ecad_help__ = True  # type: ignore[attr-defined]
        cls.INPUT_TYPES = classmethod(input_types)
