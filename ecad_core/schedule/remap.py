"""Fitting a schedule to a run of another number of steps (or denoise < 1)."""

from __future__ import annotations

import copy
import math

import numpy as np

from .schedule import MAX_STEPS, Schedule


def remap_steps(schedule: Schedule, steps: int, denoise: float = 1.0) -> Schedule:
    """Fit a schedule to a run of ``steps`` sampling steps (documented in docs/schedule-format.md).

    Both runs are laid on the same trajectory time axis [0, 1). Source step s
    starts at s/S. A run of T steps with denoise d executes the last T steps of
    a trajectory of round(T/d) steps, so its step t covers
    [(t+o)/F, (t+o+1)/F) with F = round(T/d), o = F - T. A unit is recomputed at
    target step t iff some source step that *starts* inside t's interval
    recomputes it. Every source recompute event lands on exactly one target
    step: upsampling keeps the recompute count (and speedup), downsampling
    merges events (never drops one). Step 0 of the target is always computed.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    if not (isinstance(denoise, (int, float)) and 0.0 < denoise <= 1.0) or math.isnan(denoise):
        raise ValueError(f"denoise must be in (0, 1], got {denoise!r}")
    S = schedule.steps
    full = max(steps, round(steps / denoise))
    offset = full - steps
    if S == steps and offset == 0:
        return schedule.copy()
    src = schedule.effective_bits()
    out = np.zeros((steps, schedule.layout.n_units), bool)
    for s in range(S):
        # target step whose interval holds source start s/S: t + offset = floor(s*F/S)
        t = (s * full) // S - offset
        if 0 <= t < steps:
            out[t] |= src[s]
    out[0] = True
    prov = copy.deepcopy(schedule.provenance)
    prov.setdefault("remapped", []).append({"from_steps": S, "to_steps": steps, "denoise": denoise})
    # measured costs belonged to the original step count
    return schedule.copy(bits=out, provenance=prov, metrics={})
