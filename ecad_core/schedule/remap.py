"""Where each step of a run sits on a schedule (documented in docs/schedule-format.md, "Fitting a run").

A run is a slice of a trajectory: ``steps`` steps starting at step ``start`` of a trajectory of ``total`` steps
(a whole run: start 0, total = steps; img2img at denoise d: the last steps of int(steps/d); a stage of a split
run: its own steps of the shared trajectory). Schedule and trajectory are laid on one time axis [0, 1):
source step s covers [s/S, (s+1)/S), trajectory step j covers [j/F, (j+1)/F). With F >= S trajectory step j
takes the row of the source step holding its midpoint: each row is repeated over the steps in its share, so the
recompute fraction (and the label's speedup) is kept, to less than one step per run of recomputes. With F < S
it OR-s the rows of the source steps whose midpoints fall inside it: rows merge, none is dropped. Either way a
recompute is never turned into a reuse (all-recompute stays all-recompute), and F = S is the identity.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from .schedule import MAX_STEPS, Schedule


@dataclass(frozen=True)
class Slice:
    """A run's place on its trajectory: steps ``start`` .. ``start + steps - 1`` of ``total``."""

    steps: int
    start: int = 0
    total: int | None = None  # None: start + steps (the run ends the trajectory)

    @property
    def full(self) -> int:
        return self.total if self.total is not None else self.start + self.steps

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.full == self.steps

    @classmethod
    def from_denoise(cls, steps: int, denoise: float) -> Slice:
        """The tail ComfyUI's KSampler / BasicScheduler run at denoise < 1: the last ``steps`` of int(steps/d)."""
        full = max(steps, int(steps / denoise)) if denoise < 0.9999 else steps
        return cls(steps, full - steps, full)


def source_steps(S: int, F: int, j: int) -> range:
    """The source steps (of S) whose rows trajectory step ``j`` (of F) takes (OR-ed together)."""
    if F >= S:  # the source step holding j's midpoint (each source step is held by one or more)
        s = ((2 * j + 1) * S) // (2 * F)
        return range(s, s + 1)
    # fewer steps: those whose midpoint (s + 1/2)/S lies in [j/F, (j+1)/F), i.e. 2jS <= (2s+1)F < 2(j+1)S
    # (each source step in exactly one trajectory step, so nothing is dropped)
    lo = -(-(2 * j * S - F) // (2 * F))
    hi = (2 * (j + 1) * S - F - 1) // (2 * F)
    return range(max(lo, 0), min(hi, S - 1) + 1)


def trajectory_rows(bits: np.ndarray, sl: Slice) -> np.ndarray:
    """Rows ``[sl.steps, units]`` of the schedule ``bits`` ([S, units]) for the run ``sl`` (no step forced)."""
    S, F = bits.shape[0], sl.full
    out = np.zeros((sl.steps, bits.shape[1]), bool)
    for t in range(sl.steps):
        out[t] = bits[source_steps(S, F, sl.start + t)].any(axis=0)
    return out


def _check_int(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def remap_steps(
    schedule: Schedule, steps: int, denoise: float = 1.0, *, start: int | None = None, total: int | None = None
) -> Schedule:
    """The schedule for a run of ``steps`` steps: at ``denoise`` < 1 (the trajectory's tail, as ComfyUI's
    KSampler runs it), or at steps ``start`` .. ``start + steps - 1`` of a ``total``-step trajectory (a stage of
    a split run). Step 0 of the result is computed (nothing is cached before a run's first step)."""
    _check_int("steps", steps, 1, MAX_STEPS)
    if not (isinstance(denoise, (int, float)) and 0.0 < denoise <= 1.0) or math.isnan(denoise):
        raise ValueError(f"denoise must be in (0, 1], got {denoise!r}")
    if start is None and total is None:
        sl = Slice.from_denoise(steps, float(denoise))
    else:
        start = _check_int("start", 0 if start is None else start, 0, MAX_STEPS)
        full = _check_int("total", start + steps if total is None else total, 1, MAX_STEPS * 100)
        if start + steps > full:
            raise ValueError(f"steps {start}..{start + steps - 1} do not fit a trajectory of {full} steps")
        sl = Slice(steps, start, full)
    S = schedule.steps
    if sl.whole and S == steps:
        return schedule.copy()
    out = trajectory_rows(schedule.effective_bits(), sl)
    prov = copy.deepcopy(schedule.provenance)
    prov.setdefault("remapped", []).append(
        {"from_steps": S, "to_steps": steps, "start": sl.start, "trajectory_steps": sl.full}
    )
    # measured costs belonged to the original step count
    return schedule.copy(bits=out, provenance=prov, metrics={})


def stage_rows(schedule_steps: int, sl: Slice) -> list[int]:
    """The rows of a ``schedule_steps``-row schedule that the run ``sl`` reads (a stage of a split run: its own
    steps of the trajectory), by the rule above; in order, each once."""
    rows: set[int] = set()
    for j in range(sl.start, sl.start + sl.steps):
        rows.update(source_steps(schedule_steps, sl.full, j))
    return sorted(rows)


def embed_stage(stage: Schedule, sl: Slice) -> Schedule:
    """The schedule of the whole trajectory (``sl.full`` rows) whose rows the stage ``sl`` reads carry ``stage``'s
    bits (one row per stage step) and whose other rows recompute: a search of one stage, as a schedule that the
    stage's model applies to the whole trajectory unchanged (its other rows are never read by that stage)."""
    if stage.steps != sl.steps:
        raise ValueError(f"schedule {stage.name!r} has {stage.steps} rows, the stage {sl.steps} steps")
    bits = np.ones((sl.full, stage.layout.n_units), bool)
    bits[stage_rows(sl.full, sl)] = stage.bits
    prov = copy.deepcopy(stage.provenance)
    prov["stage"] = {"start": sl.start, "end": sl.start + sl.steps, "trajectory_steps": sl.full}
    return stage.copy(bits=bits, provenance=prov)
