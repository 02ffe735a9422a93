"""Public API on diffusers: ``apply(pipe_or_transformer, schedule)`` and ``cached(...)``.

The step of each transformer call is read from its ``timestep`` argument:
timesteps fall during a run, so a repeated value is another call at the same
step (cond and uncond run separately) and a larger value starts a new run.
When a pipeline is given, its scheduler's ``set_timesteps`` also marks the
start of a run and tells the number of steps: a run that starts later in the
scheduler's list (img2img strength < 1) is the tail of that trajectory and
reads its rows, by the same rule as ComfyUI runs (``ecad_core.schedule.remap``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import torch

from ..engine import CacheEngine, RunStats, Step0Memo
from ..engine.compiling import outside_compile
from ..hooks import UnitHook
from ..schedule import Schedule, load_schedule
from .adapters import find_diffusers_units

log = logging.getLogger("ecad")


def _timestep_value(args, kwargs) -> float:
    t = kwargs.get("timestep")
    if t is None:
        # PixArt: forward(hidden_states, encoder_hidden_states, timestep, ...);
        # FLUX: forward(hidden_states, encoder_hidden_states, pooled_projections, timestep, ...)
        raise TypeError(
            "ECAD: the transformer was called without a 'timestep' keyword; "
            "call it as diffusers pipelines do (timestep=...)"
        )
    if isinstance(t, torch.Tensor):
        return float(t.reshape(-1)[0].item())
    return float(t)


def _timestep_offset(ts: list[float], t: float) -> int:
    """Index of the run's first timestep in the scheduler's list (0 if not found).

    FLUX pipelines pass timestep/1000 to the transformer, and half precision
    rounds it, so match the nearest value at either scale.
    """
    best, best_err = 0, float("inf")
    for scale in (1.0, 1e-3):
        for i, v in enumerate(ts):
            err = abs(v * scale - t) / max(abs(t), 1e-3)
            if err < best_err:
                best, best_err = i, err
    return best if best_err < 5e-3 else 0


class StepTracker:
    """Turns the stream of transformer calls into (run, step, branch) for the engine."""

    def __init__(self, engine: CacheEngine):
        self.engine = engine
        self.last_t: float | None = None
        self.step = -1
        self.branch = 0
        self.run_timesteps: list[float] | None = None
        self.pending_new_run = True
        # Counting mode: pipelines that pass a converted timestep (FLUX: t.to(dtype) / 1000) are followed by
        # counting scheduler.step calls (apply() wraps it), reading the timestep only at a run's first call.
        self.step_hooked = False
        self.sched_steps = 0
        self._count_at_call: int | None = None
        self._countable = False

    def scheduler_set(self, timesteps) -> None:
        ts = torch.as_tensor(timesteps)
        vals = [float(v) for v in ts.reshape(-1).tolist()]
        # Pipelines pass views of this tensor as the timestep (PixArt: ``t[None].expand(B)``): those are
        # identified by their storage offset, without reading the device (no host sync per call).
        self._ts_tensor = ts if ts.dim() == 1 else None
        self._ts_values = vals
        distinct: list[float] = []
        for v in vals:  # Heun-like schedulers repeat timesteps: keep one per step
            if not distinct or v != distinct[-1]:
                distinct.append(v)
        self.run_timesteps = distinct
        self.pending_new_run = True
        # one scheduler.step per sampling step only when no timestep repeats (not Heun-like schedulers)
        self._countable = len(distinct) == len(vals)
        self._count_at_call = None

    def scheduler_stepped(self) -> None:
        """The scheduler finished a step (called by the wrapped ``scheduler.step``)."""
        self.sched_steps += 1

    def can_count(self) -> bool:
        return self.step_hooked and self._countable

    def observe_counted(self, read_t) -> None:
        """Step from the number of scheduler steps since the last call; ``read_t()`` (a device read) only at
        the run's first call, or when the count runs past the schedule (a run begun without set_timesteps)."""
        n = self.sched_steps
        last = self._count_at_call
        if self.pending_new_run or last is None or (n > last and self.step + n - last >= self.engine.active.steps):
            self._start(read_t())
        elif n > last:
            self.step += n - last
            self.branch = 0
        else:
            self.branch += 1
        self._count_at_call = n
        self.last_t = None
        self.engine.set_position(self.step, self.branch)

    def value_without_sync(self, t) -> float | None:
        """The timestep's value when ``t`` views the scheduler's timesteps tensor, else None."""
        ts = getattr(self, "_ts_tensor", None)
        if ts is None or not isinstance(t, torch.Tensor) or t.dtype != ts.dtype or t.device != ts.device:
            return None
        if t.untyped_storage().data_ptr() != ts.untyped_storage().data_ptr():
            return None
        i, r = divmod(t.storage_offset() - ts.storage_offset(), ts.stride(0) or 1)
        if r or not 0 <= i < len(self._ts_values) or (t.numel() > 1 and any(st for st in t.stride())):
            return None
        return self._ts_values[i]

    def observe(self, t: float) -> None:
        if self.pending_new_run or self.last_t is None or t > self.last_t:
            self._start(t)
        elif t == self.last_t:
            self.branch += 1
        else:
            self.step += 1
            self.branch = 0
        self.last_t = t
        self.engine.set_position(self.step, self.branch)

    def _start(self, t: float) -> None:
        if self.engine.in_run:
            self.engine.end_run()
        steps, offset, total = None, 0, None
        ts = self.run_timesteps
        if ts is not None and self.pending_new_run:
            # img2img / strength < 1 skips the first timesteps of the scheduler's list: the run is the tail of
            # that trajectory, and reads its rows (the rule of ecad_core.schedule.remap, as on ComfyUI)
            offset = _timestep_offset(ts, t)
            steps, total = len(ts) - offset, len(ts)
        self.engine.begin_run(steps, start=offset, total=total)
        self.pending_new_run = False
        self.step, self.branch = 0, 0


class EcadHandle:
    """A schedule attached to a diffusers transformer; ``remove()`` restores the model exactly."""

    def __init__(self, transformer, schedule: Schedule, engine: CacheEngine, hooks, tracker, handles, scheduler=None):
        self.transformer = transformer
        self.schedule = schedule
        self.engine = engine
        self._hooks = hooks
        self.tracker = tracker
        self._handles = handles
        self._scheduler = scheduler
        self.removed = False
        self.graph_mode: Any = None  # ecad_core.cuda_graphs.GraphMode when apply(..., cuda_graphs=True)
        self.step0_memo: Step0Memo | None = None  # apply(..., step0_memo=...): its forward is ours until remove()
        self._step0_forward: Any = None

    @property
    def cuda_graphs(self) -> dict | None:
        """CUDA-graph mode status (active, reason when off, graphs, replays), or None if not asked for."""
        return self.graph_mode.status() if self.graph_mode is not None else None

    @property
    def stats(self) -> RunStats:
        """Statistics of the current run (or the last finished one)."""
        return self.engine.stats if self.engine.in_run else (self.engine.last_stats or self.engine.stats)

    def finish_run(self) -> RunStats:
        """End the current run now (frees the cache); returns its statistics."""
        return self.engine.end_run() if self.engine.in_run else self.stats

    def cache_bytes(self) -> int:
        return self.engine.cache_bytes()

    def set_enabled(self, enabled: bool) -> None:
        self.engine.enabled = enabled

    def remove(self) -> None:
        if self.removed:
            return
        if self.graph_mode is not None:
            self.graph_mode.detach()
        if self._step0_forward is not None and self.transformer.__dict__.get("forward") is self._step0_forward[0]:
            if self._step0_forward[1] is None:
                del self.transformer.forward
            else:
                self.transformer.forward = self._step0_forward[1]
        for h in self._hooks:
            h.detach()
        for h in self._handles:
            h.remove()
        for attr in ("set_timesteps", "step"):
            if self._scheduler is not None and attr in self._scheduler.__dict__:
                delattr(self._scheduler, attr)
        self.engine.end_run()
        self.engine.clear()
        self.removed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _attach_hooks(units, engine: CacheEngine) -> list:
    """Blocks a re-statement covers (PixArt, FLUX) get it, so a reused unit's input is not built; every other
    unit is hooked at its module."""
    by_unit = {}
    unfit: dict[str, list] = {}
    for b in units.blocks:
        if b.hook is None:
            continue
        why = b.hook.unfit_reason(b.module)
        if why is None:
            by_unit[b.first_unit] = (b, b.hook)
        else:
            unfit.setdefault(b.kind, []).append((b.name, why))
    for kind, blocks in unfit.items():
        log.info("ECAD: %d %s blocks (first: %s, %s) are hooked at their modules", len(blocks), kind, *blocks[0])
    covered = {u for b, _ in by_unit.values() for u in range(b.first_unit, b.first_unit + b.n_units)}
    hooks: list = []
    try:
        for i, (m, name) in enumerate(zip(units.modules, units.names)):
            if i in by_unit:
                b, hook = by_unit[i]
                hooks.append(hook(engine, i, b.name).attach(b.module))
            elif i not in covered:
                hooks.append(UnitHook(engine, i, name).attach(m))
    except Exception:
        for h in hooks:
            h.detach()
        raise
    return hooks


def apply(
    target,
    schedule: Schedule | str | Path,
    *,
    offload_device=None,
    cuda_graphs: bool = False,
    max_graphs: int = 64,
    step0_memo: Step0Memo | None = None,
) -> EcadHandle:
    """Attach ``schedule`` to a diffusers pipeline (with ``.transformer``) or a transformer.

    Returns a handle; ``handle.remove()`` (or ``with``) restores the model.
    ``cuda_graphs=True`` captures each schedule row's forward once as a CUDA graph and replays it
    (``ecad_core.cuda_graphs``); where that is impossible it runs eagerly and
    ``handle.cuda_graphs["reason"]`` (and the log) says why.
    ``step0_memo``: a search's ``Step0Memo`` (``ecad_core.engine.step0``), shared by its runs: a step-0
    transformer call with exactly the inputs of a recorded one is served from it instead of run (same output,
    same statistics). For a search's generate function only; not with ``cuda_graphs``.
    Raises ModelMismatchError when the schedule is for another family or block count.
    """
    if step0_memo is not None and cuda_graphs:
        raise ValueError("ECAD: step0_memo and cuda_graphs exclude each other (graph mode keeps its own buffers)")
    if not isinstance(schedule, Schedule):
        schedule = load_schedule(schedule)
    transformer = getattr(target, "transformer", None)
    scheduler = getattr(target, "scheduler", None) if transformer is not None else None
    if transformer is None:
        transformer = target
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(f"ECAD: expected a diffusers pipeline or transformer, got {type(target).__name__}")
    units = find_diffusers_units(transformer)
    schedule.check_fits(units.layout, units.model_kind)
    engine = CacheEngine(schedule, offload_device=offload_device)
    tracker = StepTracker(engine)
    hooks = _attach_hooks(units, engine)

    @outside_compile  # the step it finds changes at every call: traced, it would recompile every step
    def pre_hook(module, args, kwargs):
        t = tracker.value_without_sync(kwargs.get("timestep"))
        if t is not None:
            tracker.observe(t)
        elif tracker.can_count():
            tracker.observe_counted(lambda: _timestep_value(args, kwargs))
        else:
            tracker.observe(_timestep_value(args, kwargs))

    handles = [transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    if scheduler is not None and hasattr(scheduler, "set_timesteps"):
        original = scheduler.set_timesteps

        @functools.wraps(original)
        def set_timesteps(*a, **kw):
            out = original(*a, **kw)
            tracker.scheduler_set(scheduler.timesteps)
            return out

        scheduler.set_timesteps = set_timesteps
        if callable(getattr(scheduler, "step", None)):
            original_step = scheduler.step

            @functools.wraps(original_step)
            def step(*a, **kw):
                out = original_step(*a, **kw)
                tracker.scheduler_stepped()
                return out

            scheduler.step = step
            tracker.step_hooked = True
    else:
        scheduler = None
    handle = EcadHandle(transformer, schedule, engine, hooks, tracker, handles, scheduler)
    if step0_memo is not None:
        handle.step0_memo = step0_memo
        handle._step0_forward = (_step0_forward(transformer, engine, step0_memo), transformer.__dict__.get("forward"))
        transformer.forward = handle._step0_forward[0]
    if cuda_graphs:
        from ..engine.cuda_graphs import GraphMode

        handle.graph_mode = GraphMode(transformer, engine, max_graphs=max_graphs)
    return handle


def _step0_forward(transformer, engine: CacheEngine, memo: Step0Memo):
    """The transformer's forward with its step-0 calls routed through ``memo`` (the step pre-hook has already
    told the engine the call's step and branch when the module calls it)."""
    own = transformer.forward

    @functools.wraps(own)
    def forward(*args, **kwargs):
        if not memo.usable(engine):  # every step but 0: no inputs to gather
            return own(*args, **kwargs)
        return memo.call(engine, lambda: own(*args, **kwargs), (args, kwargs))

    return forward


@contextlib.contextmanager
def cached(target, schedule, **kw):
    """``with cached(pipe, schedule) as h: pipe(...)`` — removed on exit, even on error."""
    h = apply(target, schedule, **kw)
    try:
        yield h
    finally:
        h.remove()
