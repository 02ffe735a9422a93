"""The unit probe: how much each unit's output changes between steps on a full-compute run.

Reusing unit u at step t the output it computed at step c < t errs by what that output changed in between,
``out_u(t) - out_u(c)``. One all-recompute run through the engine's unit-timer seam (``unit_timing``) records
every unit's outputs, and ``UnitChangeProbe.changes()`` gives ``E[u, t, c] = ||out_u(t) - out_u(c)||^2`` (summed
over the CFG branches the host calls separately). The engine keeps every output in that run, so adapters that
compute units inside a host's own block (ComfyUI's FLUX) capture and store them, and the engine hands those to
``observe``. ``ecad_core.search.sensitivity`` turns the table into schedules without running the model.

Outputs larger than ``max_coords`` elements are recorded at a fixed random subset of their elements (the same for
every step of a unit), the squared change scaled by numel / kept: an unbiased estimate whose memory is
``units x steps x max_coords`` floats on the CPU whatever the image size or batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import EvaluationError
from ..schedule import Layout, Schedule
from .engine import _tree_map, unit_timing

log = logging.getLogger("ecad")

MAX_COORDS = 4096


class UnitChangeProbe:
    """A unit timer that records each unit's output at each step (and CFG branch) of the runs it sees."""

    def __init__(self, n_units: int, steps: int, *, max_coords: int = MAX_COORDS, seed: int = 0):
        if max_coords < 1:
            raise ValueError(f"max_coords must be >= 1, got {max_coords}")
        self.n_units, self.steps, self.max_coords, self.seed = n_units, steps, max_coords, seed
        self.engine = None
        # (run, unit, branch) -> step -> values; a host that samples in several runs (batches) adds them up
        self.records: dict[tuple[int, int, object], dict[int, torch.Tensor]] = {}
        self.scales: dict[tuple[int, int, object], float] = {}  # numel / kept
        self.runs = 0
        self._picks: dict[tuple[int, int], tuple[torch.Tensor | None, float]] = {}  # (unit, numel) -> (index, scale)

    def bind(self, engine) -> None:
        """Called by the engine at the start of each run: the step and branch are read from it."""
        self.engine = engine
        self.runs += 1

    def __call__(self, unit: int, compute: Callable):
        out = compute()
        self.observe(unit, out)
        return out

    def observe(self, unit: int, out) -> None:
        """Record ``out`` as ``unit``'s output at the bound engine's step and branch (the engine calls this for
        the outputs adapters store themselves; ``__call__`` for the units it runs)."""
        eng = self.engine
        if eng is None or not 0 <= eng.step < self.steps or out is None:
            return
        parts: list[torch.Tensor] = []
        _tree_map(lambda t: parts.append(t.detach().reshape(-1)), out)
        if not parts:
            return
        flat = parts[0] if len(parts) == 1 else torch.cat([p.to(parts[0].dtype) for p in parts])
        idx, scale = self._pick(unit, flat.numel())
        kept = flat if idx is None else flat[idx.to(flat.device)]
        key = (self.runs, unit, eng.branch)
        self.records.setdefault(key, {})[int(eng.step)] = kept.float().cpu()
        self.scales[key] = scale

    def _pick(self, unit: int, numel: int) -> tuple[torch.Tensor | None, float]:
        key = (unit, numel)
        if key not in self._picks:
            if numel <= self.max_coords:
                self._picks[key] = (None, 1.0)
            else:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + unit)
                idx = torch.randperm(numel, generator=g)[: self.max_coords]
                self._picks[key] = (idx, numel / self.max_coords)
        return self._picks[key]

    def units_seen(self) -> list[int]:
        return sorted({u for _, u, _ in self.records})

    def units_measured(self) -> list[int]:
        """Units seen at two steps or more of one run: those whose changes the table holds (a host that stops
        running the model through the engine after step 0, as ComfyUI's fallback to no cache does, leaves none)."""
        return sorted({u for (_, u, _), by_step in self.records.items() if len(by_step) >= 2})

    def changes(self) -> np.ndarray:
        """float64 [units, steps, steps]: E[u, t, c] for c < t, summed over runs and branches (0 elsewhere, and for
        units or steps not seen)."""
        E = np.zeros((self.n_units, self.steps, self.steps))
        for key, by_step in self.records.items():
            steps = sorted(by_step)
            X = torch.stack([by_step[s] for s in steps]).double()  # [seen steps, kept]
            d = torch.cdist(X, X, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy() * self.scales[key]
            u = key[1]
            ii = np.array(steps)
            E[u][np.ix_(ii, ii)] += np.tril(d, -1)
        return E


def probe_unit_changes(
    generate: Callable[[Schedule], Sequence[torch.Tensor]],
    layout: Layout,
    steps: int,
    *,
    max_coords: int = MAX_COORDS,
    seed: int = 0,
) -> np.ndarray | None:
    """Run ``generate`` once with every unit computed and return the probe's table [units, steps, steps]
    (``UnitChangeProbe.changes``), or None when the run computed no unit through the engine at two steps or more
    (a host whose pack fell back to running the model uncached, or units that run outside the engine): nothing
    was measured, and ``sensitivity.unit_changes_for`` falls back to a search without probe seeds.
    ``generate(schedule)`` must sample through the pack's engine, as the search's generate functions do
    (``LocalEvaluator``'s)."""
    probe = UnitChangeProbe(layout.n_units, steps, max_coords=max_coords, seed=seed)
    with torch.no_grad(), unit_timing(probe):
        generate(Schedule.full(layout, steps, name="unit-probe"))
    seen = probe.units_measured()
    if not seen:
        return None
    if len(seen) < layout.n_units:
        log.warning(
            "ECAD unit probe: saw %d of %d units (the others computed outside the engine); they count as unchanged",
            len(seen),
            layout.n_units,
        )
    return probe.changes()


def record_unit_changes(
    generate: Callable[[Schedule], Sequence[torch.Tensor]],
    layout: Layout,
    steps: int,
    *,
    max_coords: int = MAX_COORDS,
    seed: int = 0,
) -> np.ndarray:
    """``probe_unit_changes``, with EvaluationError when the run computed no unit through the engine (for callers
    that cannot search without the table)."""
    changes = probe_unit_changes(generate, layout, steps, max_coords=max_coords, seed=seed)
    if changes is None:
        raise EvaluationError(
            "the unit probe saw no unit computation: this generate function does not sample through the ECAD "
            "engine, so the probe cannot measure anything"
        )
    return changes
