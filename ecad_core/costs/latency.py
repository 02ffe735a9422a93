"""The latency objective: unit costs measured in seconds on this device.

``measured_latency_cost`` times each unit during one full-compute sampling run,
as the cache runs it (seconds, including the input a re-stated block builds
only for a computed unit; the fixed part is everything else the transformer
does), for a search that minimises measured latency. Units are timed through
the engine's timing seam (``ecad_core.engine.unit_timing``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..errors import SearchSettingsError
from ..schedule import Layout
from .compute import ComputeCost


def measured_latency_cost(
    transformer,
    layout: Layout,
    steps: int,
    run_full: Callable[[], object],
    *,
    unit_modules=None,
    warmup: bool = True,
    run_patched: Callable[[], object] | None = None,
) -> ComputeCost:
    """Unit times in seconds, timed on this device while ``steps`` steps are sampled with full compute.

    With ``run_patched`` (sampling with this pack's cache attached and every unit computed), each unit is
    timed as the cache runs it: what reusing it saves, including the input a re-stated block builds only
    for a computed unit (PixArt's norm + modulation before ``attn1`` / ``ff``; FLUX's norms, and the
    activation + concatenation before a single block's ``proj_out``). Otherwise ``run_full()`` samples
    the unpatched model and each unit's module (``find_diffusers_units`` order, or ``unit_modules``) is
    timed. Either way each call of ``transformer`` is timed too, the device synchronised around every
    timing; a unit's cost per step is its total time / ``steps``, the fixed cost per step the
    transformer's time outside the units / ``steps``. ``warmup`` samples once untimed first (allocator,
    kernel selection).
    """
    import contextlib

    import torch

    from ..engine import unit_timing

    if run_patched is None and unit_modules is None:
        from ..diffusers.adapters import find_diffusers_units

        um = find_diffusers_units(transformer)
        if um.layout != layout:
            raise SearchSettingsError(f"the transformer has {um.layout.describe()}, the search {layout.describe()}")
        unit_modules = um.modules
    if run_patched is None and len(unit_modules) != layout.n_units:
        raise SearchSettingsError(f"{len(unit_modules)} unit modules for {layout.n_units} units")
    try:
        device = next(transformer.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    # ComfyUI may move the weights to the GPU only inside run_full(): synchronise whenever CUDA is there
    sync = torch.cuda.synchronize if (device.type == "cuda" or torch.cuda.is_available()) else (lambda: None)
    unit_s = np.zeros(layout.n_units)
    call_s = [0.0]
    calls = [0]
    starts: dict = {}

    def pre(key):
        def hook(module, args, kwargs=None):
            sync()
            starts[key] = time.perf_counter()

        return hook

    def post(key, into):
        def hook(module, args, *rest):
            sync()
            into(key, time.perf_counter() - starts.pop(key))

        return hook

    def add_unit(i, dt):
        unit_s[i] += dt

    def add_call(_, dt):
        call_s[0] += dt
        calls[0] += 1

    run = run_full if run_patched is None else run_patched
    if warmup:
        with torch.no_grad():
            run()
    handles = []
    timed = np.zeros(layout.n_units, dtype=np.int64)
    try:
        if run_patched is None:
            for i, m in enumerate(unit_modules):
                handles.append(m.register_forward_pre_hook(pre(i)))
                handles.append(m.register_forward_hook(post(i, add_unit)))
        handles.append(transformer.register_forward_pre_hook(pre("call")))
        handles.append(transformer.register_forward_hook(post("call", add_call)))

        def time_unit(unit, compute):
            sync()
            t0 = time.perf_counter()
            out = compute()
            sync()
            unit_s[unit] += time.perf_counter() - t0
            timed[unit] += 1
            return out

        with torch.no_grad(), unit_timing(time_unit) if run_patched is not None else contextlib.nullcontext():
            run()
    finally:
        for h in handles:
            h.remove()
    if calls[0] == 0:
        raise SearchSettingsError("measuring latency: the full-compute run never called the transformer")
    if run_patched is not None and not timed.all():
        raise SearchSettingsError(
            f"measuring latency: {int((timed == 0).sum())} of {layout.n_units} units never ran through the cache "
            f"(first: unit {int(np.argmin(timed))}); this model's units cannot be timed one by one"
        )
    fixed = max(call_s[0] - float(unit_s.sum()), 0.0) / steps
    unit = np.broadcast_to(unit_s / steps, (steps, layout.n_units)).copy()
    return ComputeCost(
        unit,
        np.full(steps, fixed),
        source="latency",
        info={
            "device": str(device),
            "seconds_per_step": round(call_s[0] / steps, 6),
            "transformer_calls": calls[0],
            "units_timed": "modules" if run_patched is None else "as the cache runs them",
        },
    )
