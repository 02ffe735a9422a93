"""Putting a schedule on a ComfyUI MODEL: ``patch_model`` (what Apply ECAD, Evolve and Evaluate all use), the
removal of an earlier Apply's state from a clone, and the refusal of a MODEL that already runs a schedule.

The clone gets the family adapter's hooks (``nodes/adapters``), ComfyUI's OUTER_SAMPLE / APPLY_MODEL wrappers of
a ``ComfyRun`` (step tracking, statistics: ``comfy_run.py``) under the key ``ecad``, and the run itself in
``transformer_options["ecad"]``. Every patch is marked, so a later Apply removes all of it, on every family.
"""

from __future__ import annotations

import logging

from ..ecad_core import costs, families
from ..ecad_core.engine import CacheEngine
from ..ecad_core.errors import EcadError
from ..ecad_core.schedule import Schedule
from . import library
from .adapters import adapter_for, is_ecad_patch
from .comfy_graphs import install_graphs
from .comfy_run import ComfyRun

log = logging.getLogger("ecad")
WRAPPER_KEY = "ecad"  # the key of ECAD's OUTER_SAMPLE / APPLY_MODEL wrappers


def expected_speedup(s: Schedule, arch: str | None) -> float | None:
    """The MACs speedup at the resolution the schedule was made for, else the one its file states."""
    res = (s.provenance or {}).get("resolution")
    try:
        if arch and isinstance(res, list) and len(res) == 2:
            return costs.expected_speedup(s, arch, int(res[0]), int(res[1]))
    except Exception:  # noqa: BLE001 - cost model does not cover this model/size: fall back to stored numbers
        pass
    return library.speedup_of(s)


def patch_model(model, schedule: Schedule, offload_to_cpu: bool = False, cuda_graphs: bool = False):
    """A patched clone of ``model`` running ``schedule``; raises a clear error if it does not fit."""
    import comfy.patcher_extension as pe

    adapter = adapter_for(model)
    schedule.check_fits(adapter.layout, adapter.kind)
    if (
        schedule.model
        and adapter.arch_hint
        and families.family_of_model(schedule.model) != families.family_of_model(adapter.arch_hint)
    ):
        raise EcadError(f"schedule {schedule.name!r} is for {schedule.model}, but the model is {adapter.kind}")
    m = model.clone()
    # a later Apply replaces an earlier one: its hooks, wrappers, run and CUDA-graph forward go
    earlier = remove_earlier_apply(m)
    if earlier is not None:
        log.info("ECAD: schedule %r replaces %r from an earlier Apply ECAD node", schedule.name, earlier)
    engine = CacheEngine(schedule, offload_device="cpu" if offload_to_cpu else None)
    run = ComfyRun(engine, label=schedule.name, expected_speedup=expected_speedup(schedule, adapter.arch_hint))
    adapter.install(m, run)
    if cuda_graphs:
        if offload_to_cpu:
            raise EcadError(
                "ECAD: CUDA graphs and offloading the cache to the CPU exclude each other (a graph "
                "cannot copy between devices); turn one of them off"
            )
        install_graphs(m, run, adapter)
    # ComfyUI's multi-GPU clones (0.33+) carry another model: the hooks, bound to this one, must not run there
    for kind in ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES"):
        if hasattr(pe.CallbacksMP, kind):
            m.add_callback_with_key(getattr(pe.CallbacksMP, kind), WRAPPER_KEY, unbind_clone)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, run.outer_sample_wrapper)
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY, run.apply_model_wrapper)
    m.model_options["transformer_options"]["ecad"] = run
    path = getattr(run, "hook_path", None)
    log.info(
        "ECAD: applied schedule %r (%d steps, %.1f%% of units recomputed) to %s; %s",
        schedule.name,
        schedule.steps,
        100 * schedule.recompute_fraction(),
        adapter.kind,
        path.describe() if path is not None else "",
    )
    return m


def unbind_clone(source, clone) -> None:
    """A multi-GPU deep clone of a patched model holds its own diffusion model (another device): ECAD's hooks were
    made for the source's, so the clone runs ComfyUI's own (uncached, the same image); the source keeps caching."""
    if getattr(clone.model, "diffusion_model", None) is getattr(source.model, "diffusion_model", None):
        return
    name = remove_earlier_apply(clone)
    log.info(
        "ECAD: the multi-GPU clone on %s runs schedule %r's model uncached (ECAD caches on %s)",
        getattr(clone, "load_device", "?"),
        name,
        getattr(source, "load_device", "?"),
    )


def remove_earlier_apply(mp) -> str | None:
    """Remove from the clone ``mp`` everything an earlier Apply ECAD node put there: its object patches (block
    forwards, module forwards, the CUDA-graph forward), its dit block patches, its wrappers and its run.
    Another node's patches stay. Returns the earlier schedule's name (None: there was none)."""
    import comfy.patcher_extension as pe

    for key in [k for k, fn in mp.object_patches.items() if is_ecad_patch(fn)]:
        del mp.object_patches[key]
    topts = mp.model_options.setdefault("transformer_options", {})
    dit = topts.get("patches_replace", {}).get("dit", {})
    for key in [k for k, fn in dit.items() if is_ecad_patch(fn)]:
        del dit[key]
    # else both runs' wrappers run: the earlier engine sees no unit calls (its hooks were replaced), so the
    # PixArt unit check fails ("self-check failed") and elsewhere an empty run is logged after the later one
    for kind in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.APPLY_MODEL):
        mp.remove_wrappers_with_key(kind, WRAPPER_KEY)
    for kind in ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES"):
        if hasattr(pe.CallbacksMP, kind) and hasattr(mp, "remove_callbacks_with_key"):
            mp.remove_callbacks_with_key(getattr(pe.CallbacksMP, kind), WRAPPER_KEY)
    earlier = topts.pop("ecad", None)
    return None if earlier is None else getattr(earlier, "label", "?")


def refuse_applied_model(model, node: str, why: str) -> None:
    """Evaluate and Evolve compare schedules with the model's full compute: a MODEL that went through
    Apply ECAD would run that schedule in their "no cache" reference, so they refuse it."""
    run = model.model_options.get("transformer_options", {}).get("ecad")
    if run is not None:
        raise EcadError(
            f"{node}: the MODEL already has an ECAD schedule applied ({getattr(run, 'label', '?')!r}, "
            f"by Apply ECAD Cache Schedule upstream); connect the model without it: {why}"
        )
