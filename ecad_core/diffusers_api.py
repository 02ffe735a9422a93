"""Public API on diffusers: ``apply(pipe_or_transformer, schedule)`` and ``cached(...)``.

The step of each transformer call is read from its ``timestep`` argument:
timesteps fall during a run, so a repeated value is another call at the same
step (cond and uncond run separately) and a larger value starts a new run.
When a pipeline is given, its scheduler's ``set_timesteps`` also marks the
start of a run and tells the number of steps, so the schedule is remapped to
the run's step count (and to img2img strength) before the first call.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

from .adapters import find_diffusers_units
from .engine import CacheEngine, RunStats
from .hooks import UnitHook
from .schedule import Schedule, load_schedule

log = logging.getLogger("ecad")


def _timestep_value(args, kwargs) -> float:
    t = kwargs.get("timestep")
    if t is None:
        # PixArt: forward(hidden_states, encoder_hidden_states, timestep, ...);
        # FLUX: forward(hidden_states, encoder_hidden_states, pooled_projections, timestep, ...)
        raise TypeError("ECAD: the transformer was called without a 'timestep' keyword; "
                        "call it as diffusers pipelines do (timestep=...)")
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

    def scheduler_set(self, timesteps) -> None:
        vals = [float(v) for v in torch.as_tensor(timesteps).reshape(-1).tolist()]
        distinct = []
        for v in vals:  # Heun-like schedulers repeat timesteps: keep one per step
            if not distinct or v != distinct[-1]:
                distinct.append(v)
        self.run_timesteps = distinct
        self.pending_new_run = True

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
        steps, denoise = None, 1.0
        ts = self.run_timesteps
        if ts is not None and self.pending_new_run:
            # img2img / strength < 1 skips the first timesteps of the scheduler's list
            offset = _timestep_offset(ts, t)
            steps = len(ts) - offset
            denoise = steps / len(ts)
        self.engine.begin_run(steps, denoise)
        self.pending_new_run = False
        self.step, self.branch = 0, 0


class EcadHandle:
    """A schedule attached to a diffusers transformer; ``remove()`` restores the model exactly."""

    def __init__(self, transformer, schedule: Schedule, engine: CacheEngine, hooks, tracker, handles,
                 scheduler=None):
        self.transformer = transformer
        self.schedule = schedule
        self.engine = engine
        self._hooks = hooks
        self.tracker = tracker
        self._handles = handles
        self._scheduler = scheduler
        self.removed = False

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
        for h in self._hooks:
            h.detach()
        for h in self._handles:
            h.remove()
        if self._scheduler is not None and "set_timesteps" in self._scheduler.__dict__:
            del self._scheduler.set_timesteps
        self.engine.end_run()
        self.engine.clear()
        self.removed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def apply(target, schedule: Schedule | str | Path, *, offload_device=None) -> EcadHandle:
    """Attach ``schedule`` to a diffusers pipeline (with ``.transformer``) or a transformer.

    Returns a handle; ``handle.remove()`` (or ``with``) restores the model.
    Raises ModelMismatchError when the schedule is for another family or block count.
    """
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
    hooks = []
    try:
        for i, (m, name) in enumerate(zip(units.modules, units.names)):
            hooks.append(UnitHook(engine, i, name).attach(m))
    except Exception:
        for h in hooks:
            h.detach()
        raise

    def pre_hook(module, args, kwargs):
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
    else:
        scheduler = None
    return EcadHandle(transformer, schedule, engine, hooks, tracker, handles, scheduler)


@contextlib.contextmanager
def cached(target, schedule, **kw):
    """``with cached(pipe, schedule) as h: pipe(...)`` — removed on exit, even on error."""
    h = apply(target, schedule, **kw)
    try:
        yield h
    finally:
        h.remove()
