"""The cache engine: ECAD's reuse semantics, kept in one state object.

A unit (a component module of a block) is called through ``CacheEngine.call``.
At a step whose bit says "recompute" (and always at step 0) the unit runs and
its raw output is stored; at a "reuse" step the stored output is returned
without running the unit. Gates and residual adds live outside the unit, so
they are always fresh. An output is kept only while a later call can reuse it
(the unit's next step, or this step, reuses): a schedule that recomputes a unit
at the next step holds no memory for it, and all-recompute stores nothing. A
reuse with nothing stored, or with a stored output whose inputs had another
shape/dtype/device, computes instead (counted as a fallback): a tensor of
another shape is never reused.

Outputs are stored per *branch*: when classifier-free guidance calls the model
separately for cond and uncond at the same step, each call keeps its own
outputs. The driver (a diffusers step tracker or a ComfyUI wrapper) tells the
engine the step and branch; the engine itself knows nothing about models.

Timing seam: ``engine.unit_timer`` (None by default) is a callable
``timer(unit, compute) -> output`` that runs every unit computation of this
engine (``compute()``) and may time it; reuses are not timed. ``unit_timing``
sets one for every engine that begins a run inside it (the latency objective
uses this: the search drives sampling through hosts that create their own
engines). With no timer the hot path is the plain ``_unit_call``: setting one
installs a timing wrapper on the instance, so the untimed path pays nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import EcadError
from ..schedule import Schedule, remap_steps
from ..schedule.remap import Slice, source_steps

log = logging.getLogger("ecad")


@dataclass
class RunStats:
    """Per-step counts of one sampling run."""

    steps: int
    units: int
    computed: np.ndarray = None  # type: ignore[assignment]  # [steps] unit calls that ran (zeros by default)
    reused: np.ndarray = None  # type: ignore[assignment]  # [steps] unit calls served from the cache
    fallback: np.ndarray = None  # type: ignore[assignment]  # [steps] reuse wanted, computed instead (nothing valid stored)
    calls: int = 0  # model calls seen (a step may have several: CFG split, Heun)
    remapped_from: int | None = None
    cache_bytes: int = 0  # bytes held by stored outputs at the end of the run
    start: int = 0  # the run's first step on its trajectory (img2img, a later stage of a split run)
    trajectory_steps: int | None = None  # steps of the whole trajectory (None: this run's own)
    # [steps] model calls in which no unit ran: another node (EasyCache, LazyCache) served them
    skipped: np.ndarray = None  # type: ignore[assignment]
    rows: tuple[int, int] | None = None  # the schedule rows this run read (first, last)
    rows_recompute_fraction: float = 1.0  # of the rows as this run used them (its first step computes)
    first_step_reuses: int = 0  # units the first step's row reuses, computed as nothing is cached yet

    def __post_init__(self):
        for k in ("computed", "reused", "fallback", "skipped"):
            if getattr(self, k) is None:
                setattr(self, k, np.zeros(self.steps, np.int64))

    @property
    def total_computed(self) -> int:
        return int(self.computed.sum())

    @property
    def total_reused(self) -> int:
        return int(self.reused.sum())

    @property
    def total_skipped_units(self) -> int:
        """Unit calls the model did not make because another node served the whole model call."""
        return int(self.skipped.sum()) * self.units

    @property
    def reuse_fraction(self) -> float:
        n = self.total_computed + self.total_reused + self.total_skipped_units
        return self.total_reused / n if n else 0.0

    @property
    def trajectory(self) -> int:
        return self.trajectory_steps if self.trajectory_steps is not None else self.start + self.steps

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "units_per_step": self.units,
            "model_calls": self.calls,
            "computed": self.total_computed,
            "reused": self.total_reused,
            "fallback_computed": int(self.fallback.sum()),
            "reuse_fraction": round(self.reuse_fraction, 6),
            "computed_per_step": self.computed.tolist(),
            "reused_per_step": self.reused.tolist(),
            "remapped_from_steps": self.remapped_from,
            "cache_bytes": self.cache_bytes,
            "start": self.start,
            "trajectory_steps": self.trajectory,
            "skipped_model_calls": int(self.skipped.sum()),
            "skipped_per_step": self.skipped.tolist(),
            "fallback_per_step": self.fallback.tolist(),
            "schedule_rows": list(self.rows) if self.rows else None,
            "rows_recompute_fraction": round(self.rows_recompute_fraction, 6),
            "first_step_reuses": self.first_step_reuses,
        }

    def summary(self) -> str:
        total = self.total_computed + self.total_reused + self.total_skipped_units
        s = (
            f"{self.total_reused}/{total} unit calls reused "
            f"({100 * self.reuse_fraction:.1f}%) over {self.steps} steps, {self.calls} model calls"
        )
        if self.skipped.sum():
            s += (
                f", {int(self.skipped.sum())} model call(s) at step(s) "
                f"{_ranges(np.flatnonzero(self.skipped).tolist())} served by another node "
                f"({self.total_skipped_units} unit calls skipped)"
            )
        if self.fallback.sum():
            s += (
                f", {int(self.fallback.sum())} reuse(s) at step(s) {_ranges(np.flatnonzero(self.fallback).tolist())} "
                f"computed for lack of a valid cached output"
            )
        if self.remapped_from is not None:
            s += f" (schedule remapped from {self.remapped_from} steps)"
        return s

    def position(self, note: str = "") -> str:
        """Where the run sat on its trajectory (``note`` after the steps, e.g. "(stage 2 of a split run)") and
        which schedule rows it read, in words."""
        end, F = self.start + self.steps - 1, self.trajectory
        s = f"steps {self.start}\u2013{end} of {F}" if self.steps > 1 else f"step {self.start} of {F}"
        s += f" {note}" if note else ""
        if self.rows is not None and self.remapped_from is not None:
            a, b = self.rows
            s += f", schedule rows {a}\u2013{b} of {self.remapped_from}" if b > a else f", schedule row {a}"
        return s


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out: list[str] = []
    for x in xs:
        if out and isinstance(out[-1], str) and out[-1].split("-")[-1] == str(x - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ", ".join(out)


_Tensor = torch.Tensor
_NO_KWARGS: dict = {}
UnitTimer = Callable[[int, Callable[[], Any]], Any]
# the timer of ``unit_timing`` (process-wide, as sampling may run in another thread than the measurement)
_ambient_timer: list[UnitTimer | None] = [None]


@contextlib.contextmanager
def unit_timing(timer: UnitTimer) -> Iterator[None]:
    """Within: every engine that begins a run times its unit computations with ``timer`` (see the module doc)."""
    _ambient_timer[0] = timer
    try:
        yield
    finally:
        _ambient_timer[0] = None


def _signature(args, kwargs) -> tuple:
    # On the hot path (every unit call): comprehensions, no helper calls.
    sig: list[tuple] = [(a.shape, a.dtype, a.device) for a in args if isinstance(a, _Tensor)]
    if kwargs:
        sig += [(k, a.shape, a.dtype, a.device) for k, a in kwargs.items() if isinstance(a, _Tensor)]
    return tuple(sig)


def _tree_map(fn, x):
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, tuple):
        return tuple(_tree_map(fn, v) for v in x)
    if isinstance(x, list):
        return [_tree_map(fn, v) for v in x]
    if isinstance(x, dict):
        return {k: _tree_map(fn, v) for k, v in x.items()}
    return x


def _tree_copy_(dst, src) -> None:
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, (tuple, list)):
        for d, s in zip(dst, src):
            _tree_copy_(d, s)
    elif isinstance(dst, dict):
        for k in dst:
            _tree_copy_(dst[k], src[k])


def tree_nbytes(x) -> int:
    total = 0

    def add(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    _tree_map(add, x)
    return total


class CacheEngine:
    """State of one patched model: the schedule, the stored outputs, the run position."""

    def __init__(self, schedule: Schedule, *, offload_device: str | torch.device | None = None):
        self.schedule = schedule
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        self.enabled = True
        self._store: dict[tuple[int, Any], tuple[tuple, Any]] = {}
        self._remap_cache: dict[Slice, Schedule] = {}
        self.last_stats: RunStats | None = None
        self.peak_cache_bytes = 0
        self._set_active(schedule, None)
        self.step = 0
        self.branch: Any = 0
        self.in_run = False
        self.run_id = 0  # counts begin_run calls (hosts that check things once per run compare it)
        # CUDA-graph mode (ecad_core.cuda_graphs): stored outputs are static buffers that captured
        # graphs read and write, so they are kept across runs and updated in place; ``_fresh`` says
        # which (unit, branch) were written during the current run.
        self.keep_store = False
        self._fresh: set = set()
        self._unit_timer: UnitTimer | None = None  # set by the user (``unit_timer``)
        self._timer_in_use: UnitTimer | None = None  # installed now (the user's or ``unit_timing``'s)
        self._observer: Any = None  # the timer when it also observes outputs (``begin_run``)

    @property
    def unit_timer(self) -> UnitTimer | None:
        """``timer(unit, compute) -> output`` around every unit computation, or None (the default)."""
        return self._unit_timer

    @unit_timer.setter
    def unit_timer(self, timer: UnitTimer | None) -> None:
        self._unit_timer = timer
        self._use_timer(timer)

    @property
    def timer_in_use(self) -> UnitTimer | None:
        """The timer of this run (this engine's or ``unit_timing``'s), or None: unit computations run plain."""
        return self._timer_in_use

    def _use_timer(self, timer: UnitTimer | None) -> None:
        if timer is self._timer_in_use:
            return
        self._timer_in_use = timer
        if timer is None:
            self.__dict__.pop("_unit_call", None)  # back to the class's untimed hot path
            return
        untimed = CacheEngine._unit_call.__get__(self)

        def timed(unit, fn, args, kwargs, sig_args, sig_kwargs):
            def run(*a, **k):
                return timer(unit, lambda: fn(*a, **k))

            return untimed(unit, run, args, kwargs, sig_args, sig_kwargs)

        self._unit_call = timed  # type: ignore[method-assign]

    def _set_active(self, sched: Schedule, remapped_from: int | None, sl: Slice | None = None):
        self.active = sched
        # Python lists: the per-call lookup is the hot path.
        bits = sched.effective_bits()
        self._bits = bits.tolist()
        # _keep[step][unit]: store a computed output (reused later this step, as by Heun's second call or a
        # fallback, or at the next step); otherwise its previous entry is dropped, never served stale
        keep = ~bits
        keep[:-1] |= ~bits[1:]
        self._keep = keep.tolist()
        self._stats = st = RunStats(sched.steps, sched.layout.n_units, remapped_from=remapped_from)
        st.rows_recompute_fraction = float(bits.mean())
        st.first_step_reuses = int((~sched.bits[0]).sum())
        if sl is not None:
            st.start, st.trajectory_steps = sl.start, sl.full
            S = self.schedule.steps
            st.rows = (source_steps(S, sl.full, sl.start)[0], source_steps(S, sl.full, sl.start + sl.steps - 1)[-1])
        else:
            st.rows = (0, sched.steps - 1)
        # Per-step counters as Python lists (a numpy element update costs ~8x more per unit call);
        # copied into the RunStats arrays whenever ``stats`` is read.
        self.n_computed = [0] * sched.steps
        self.n_reused = [0] * sched.steps
        self.n_fallback = [0] * sched.steps
        self.n_skipped = [0] * sched.steps
        self.n_calls = [0] * sched.steps  # model calls per step (a step with none was served by another node)

    @property
    def stats(self) -> RunStats:
        """Statistics of the current run (counters up to date)."""
        st = self._stats
        st.computed[:] = self.n_computed
        st.reused[:] = self.n_reused
        st.fallback[:] = self.n_fallback
        st.skipped[:] = self.n_skipped
        return st

    # -- run control ---------------------------------------------------------
    def begin_run(
        self, steps: int | None = None, denoise: float = 1.0, *, start: int | None = None, total: int | None = None
    ) -> None:
        """Start a sampling run of ``steps`` steps (None: the schedule's own count). Where it sits on its
        trajectory: ``denoise`` < 1 (the last steps of int(steps/denoise), as ComfyUI's KSampler runs it), or
        steps ``start`` .. of a ``total``-step trajectory (a stage of a split run); the rows it reads follow the
        rule of ``ecad_core.schedule.remap``."""
        if not self.keep_store:
            self._store.clear()
        self._fresh.clear()
        sched, src, sl = self.schedule, None, None
        if steps is not None:
            if start is None and total is None:
                sl = Slice.from_denoise(int(steps), float(denoise))
            else:
                st0 = int(start or 0)
                sl = Slice(int(steps), st0, int(total) if total is not None else st0 + int(steps))
            if sl.whole and sl.steps == self.schedule.steps:
                sl = None
        if sl is not None:
            if sl not in self._remap_cache:
                self._remap_cache[sl] = remap_steps(self.schedule, sl.steps, start=sl.start, total=sl.full)
                log.info(
                    "ECAD: schedule %r has %d steps; fitted to steps %d-%d of a %d-step trajectory",
                    self.schedule.name,
                    self.schedule.steps,
                    sl.start,
                    sl.start + sl.steps - 1,
                    sl.full,
                )
            sched, src = self._remap_cache[sl], self.schedule.steps
        self._set_active(sched, src, sl)
        timer = self._unit_timer if self._unit_timer is not None else _ambient_timer[0]
        self._use_timer(timer)
        # a timer that observes outputs (the unit probe): it reads the step and branch here, and sees the outputs
        # adapters store themselves (units computed inside a host's block), which are all kept for it
        self._observer = timer if callable(getattr(timer, "observe", None)) else None
        if self._observer is not None:
            self._observer.bind(self)
            self._keep = [[True] * len(row) for row in self._keep]
        self.step, self.branch, self.in_run = 0, 0, True
        self.run_id += 1

    def units_counted(self) -> int:
        """Unit calls counted at the current step so far (a host compares it around a model call)."""
        return self.n_computed[self.step] + self.n_reused[self.step]

    def model_call_skipped(self, step: int | None = None) -> None:
        """A model call at ``step`` (default: the current one) ran no unit: another node served it (counted as
        skipped, so the statistics keep it in their denominator)."""
        self.n_skipped[self.step if step is None else step] += 1

    def steps_without_calls(self, reached: int) -> list[int]:
        """Steps before ``reached`` at which the model was never called (a node in front served them)."""
        return [i for i in range(min(reached, len(self.n_calls))) if not self.n_calls[i]]

    def set_position(self, step: int, branch: Any = 0) -> None:
        if step >= self.active.steps:
            raise EcadError(
                f"ECAD: the model was called at sampling step {step + 1}, but schedule "
                f"{self.schedule.name!r} covers {self.active.steps} steps; run with that many steps or "
                f"remap the schedule (ecad_core.remap_steps)"
            )
        self.step, self.branch = step, branch
        self._stats.calls += 1
        self.n_calls[step] += 1

    def end_run(self) -> RunStats:
        """Finish the run: free the stored outputs and return its statistics."""
        stats = self.stats
        stats.cache_bytes = self.cache_bytes()
        self.last_stats = stats
        if not self.keep_store:
            self._store.clear()
        self._fresh.clear()
        self.in_run = False
        return stats

    def clear(self) -> None:
        self._store.clear()
        self._fresh.clear()

    @contextlib.contextmanager
    def paused(self):
        """Everything inside computes and touches neither the cache nor the statistics (self-checks)."""
        was = self.enabled
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = was

    # -- the unit call ---------------------------------------------------------
    def call(self, unit: int, fn: Callable, args: tuple, kwargs: dict):
        """Run ``fn(*args, **kwargs)`` as unit ``unit`` under the schedule."""
        if not self.in_run or not self.enabled:
            return fn(*args, **kwargs)
        return self._unit_call(unit, fn, args, kwargs, args, kwargs)

    def call_lazy(self, unit: int, compute: Callable, sig_args: tuple, sig_kwargs: dict | None = None):
        """Run ``compute()`` as unit ``unit``: for adapters that build a unit's input only when it computes
        (a re-stated block skips the norm + modulation feeding a reused unit). ``sig_args`` /
        ``sig_kwargs`` hold tensors shaped like the unit's input: a stored output is served only to calls
        with the same signature."""
        if not self.in_run or not self.enabled:
            return compute()
        return self._unit_call(unit, compute, (), _NO_KWARGS, sig_args, sig_kwargs)

    def _unit_call(self, unit, fn, args, kwargs, sig_args, sig_kwargs):
        # the hot path (every unit call of a run): fn(*args, **kwargs) computes, no closure per call
        step = self.step
        sig = None
        if step and not self._bits[step][unit]:
            # fetch(), inlined: this runs for every reused unit of every step
            sig = _signature(sig_args, sig_kwargs)
            key = (unit, self.branch)
            entry = self._store.get(key)
            if entry is not None and entry[0] == sig and (not self.keep_store or key in self._fresh):
                self.n_reused[step] += 1
                if self.offload_device is None:
                    return entry[1]
                dev = _first_device(sig_devices=sig)
                return _tree_map(lambda t: t.to(dev, non_blocking=True), entry[1])
            self.n_fallback[step] += 1
        elif not (self.keep_store or self._keep[step][unit]):
            # the next step recomputes this unit: nothing to keep (and no signature to take)
            out = fn(*args, **kwargs)
            self.n_computed[step] += 1
            self._store.pop((unit, self.branch), None)
            return out
        if sig is None:
            sig = _signature(sig_args, sig_kwargs)
        out = fn(*args, **kwargs)
        if self.keep_store or self.offload_device is not None:
            self.store(unit, sig, out)
        else:  # store(), inlined
            self.n_computed[step] += 1
            self._store[(unit, self.branch)] = (sig, out)
        return out

    # Primitives for adapters whose units are not single module calls (FLUX in ComfyUI).
    def active_for(self) -> bool:
        return self.enabled and self.in_run

    def keeps(self, unit: int) -> bool:
        """Whether an output of ``unit`` computed now will be stored (a later call can reuse it)."""
        return self.keep_store or self._keep[self.step][unit]

    def wants_reuse(self, unit: int) -> bool:
        return self.step > 0 and not self._bits[self.step][unit]

    def fetch(self, unit: int, sig: tuple):
        """The stored output if valid for ``sig`` (counted as reused), else None (counted as fallback)."""
        key = (unit, self.branch)
        entry = self._store.get(key)
        if entry is not None and entry[0] == sig and (not self.keep_store or key in self._fresh):
            self.n_reused[self.step] += 1
            out = entry[1]
            if self.offload_device is not None:
                dev = _first_device(sig_devices=sig)
                out = _tree_map(lambda t: t.to(dev, non_blocking=True), out)
            return out
        self.n_fallback[self.step] += 1
        return None

    def store(self, unit: int, sig: tuple, out) -> None:
        """Record a freshly computed output of ``unit`` (dropped when no later call can reuse it)."""
        self.n_computed[self.step] += 1
        if self._observer is not None:
            self._observer.observe(unit, out)
        key = (unit, self.branch)
        if not self.keeps(unit):
            self._store.pop(key, None)
            return
        if self.keep_store:
            self._fresh.add(key)
            entry = self._store.get(key)
            if entry is not None and entry[0] == sig:
                _tree_copy_(entry[1], out)  # same buffer, so captured graphs see the new value
                return
            out = _tree_map(lambda t: t.detach().clone(), out)
        elif self.offload_device is not None:
            out = _tree_map(lambda t: t.detach().to(self.offload_device, non_blocking=True), out)
        self._store[key] = (sig, out)

    @contextlib.contextmanager
    def keeping_outputs(self) -> Iterator[dict]:
        """Within (one model call): every unit output computed at the current step and branch is stored; on exit
        the dict yielded holds them (unit -> (signature, output)) and those this run's schedule would not keep are
        dropped again, so the run goes on exactly as without (the step-0 memo copies them)."""
        step, branch, row = self.step, self.branch, self._keep[self.step]
        before = {k: v for k, v in self._store.items() if k[1] == branch}
        got: dict = {}
        self._keep[step] = [True] * len(row)
        try:
            yield got
        finally:
            self._keep[step] = row
            for (unit, b), entry in list(self._store.items()):
                if b == branch and before.get((unit, b)) is not entry:
                    got[unit] = entry
                    if not (self.keep_store or row[unit]):
                        del self._store[(unit, b)]

    # -- memory ----------------------------------------------------------------
    def cache_bytes(self) -> int:
        """Bytes held by stored outputs right now."""
        n = sum(tree_nbytes(v) for _, v in self._store.values())
        self.peak_cache_bytes = max(self.peak_cache_bytes, n)
        return n


def signature(*tensors) -> tuple:
    """Signature of a unit's inputs for adapters that call fetch/store themselves."""
    return _signature(tensors, {})


def _first_device(sig_devices: tuple):
    for entry in sig_devices:
        for x in entry:
            if isinstance(x, torch.device):
                return x
    return torch.device("cpu")
