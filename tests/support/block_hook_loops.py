"""Denoising loops shared by the block re-statement tests: the engine (``ecad_core.cached``, played the way a
pipeline's scheduler plays it) and the module-output ceiling (``bench.ceiling.CeilingCache``), same schedule."""

from __future__ import annotations

import contextlib

import torch

from bench.ceiling import CeilingCache
from ecad_core import cached


def engine_loop(den, sched):
    """(output, run statistics, the type of each attached hook)."""
    with torch.no_grad(), cached(den.model, sched) as h:
        h.tracker.scheduler_set(den.timesteps)
        h.tracker.step_hooked = True
        kinds = [type(x) for x in h._hooks]

        def pre(i):
            if i > 0:
                h.tracker.scheduler_stepped()

        x = den.loop(pre)
        stats = h.finish_run()
    return x, stats, kinds


def ceiling_loop(den, sched):
    with torch.no_grad(), CeilingCache(den.unit_modules, sched.effective_bits()) as c:
        return den.loop(lambda i: setattr(c, "step", i))


@contextlib.contextmanager
def counted_calls(watched):
    """Inside: ``{key: forward calls}`` of each ``(key, module)`` in ``watched``."""
    counts, handles = {}, []
    for key, mod in watched:
        handles.append(mod.register_forward_hook(lambda *_, k=key: counts.__setitem__(k, counts.get(k, 0) + 1)))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
