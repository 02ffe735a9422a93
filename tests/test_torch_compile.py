"""ECAD on a torch.compile'd diffusers transformer (tiny random PixArt-α and FLUX.1-dev): the cache's per-step
decisions stay out of the compiled graphs, so the model compiles once (not once per step and block), gives the
eager engine's image bit for bit (backend "eager": the same kernels) and reuses the same units.
ComfyUI's TorchCompileModel node (inductor) is covered by tests/test_comfy_apply.py: there, without this, the
PixArt blocks traced into inductor's graphs differ from their eager re-statement and sampling stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.block_hook_loops import engine_loop
from torch._dynamo.utils import counters

from bench import models
from ecad_core import Schedule
from ecad_core.diffusers.adapters import find_diffusers_units

STEPS = 4


def _denoiser(kind):
    if kind == "pixart":
        return models.diffusers_pixart("alpha", 64, tiny=True, device="cpu", dtype=torch.float32, steps=STEPS)
    return models.diffusers_flux(32, tiny=True, device="cpu", dtype=torch.float32, steps=STEPS)


@pytest.mark.parametrize("kind", ["pixart", "flux"])
def test_compiled_transformer_compiles_once_and_caches_as_eager(kind):
    with torch.no_grad():
        den = _denoiser(kind)
    layout = find_diffusers_units(den.model).layout
    sched = Schedule(layout, np.random.default_rng(0).random((STEPS, layout.n_units)) < 0.4, name="random")
    eager, eager_stats, _ = engine_loop(den, sched)
    torch._dynamo.reset()
    counters.clear()
    den.model.compile(backend="eager")
    try:
        first, first_stats, _ = engine_loop(den, sched)
        graphs = counters["stats"]["unique_graphs"]
        second, second_stats, _ = engine_loop(den, sched)
        assert counters["stats"]["unique_graphs"] == graphs > 0  # the second image compiled nothing new
        assert not counters["recompiles"]  # (none at all: the step is never a guard)
    finally:
        den.model._compiled_call_impl = None
        torch._dynamo.reset()
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert first_stats.total_reused == second_stats.total_reused == eager_stats.total_reused > 0


def test_fullgraph_compile_of_hooked_blocks_says_why_it_cannot():
    # diffusers' compile_repeated_blocks(fullgraph=True) compiles each block whole; a hooked block cannot be one
    # graph, and torch.compile's error must say what to do instead
    with torch.no_grad():
        den = _denoiser("flux")
    layout = find_diffusers_units(den.model).layout
    sched = Schedule.full(layout, STEPS)
    torch._dynamo.reset()
    den.model.compile_repeated_blocks(fullgraph=True, backend="eager")
    try:
        with pytest.raises(Exception, match="ECAD's cache decides at every step.*compile with fullgraph=False"):
            engine_loop(den, sched)
    finally:
        for b in list(den.model.transformer_blocks) + list(den.model.single_transformer_blocks):
            b._compiled_call_impl = None
        torch._dynamo.reset()
    assert all("forward" not in b.__dict__ for b in den.model.transformer_blocks)  # hooks removed all the same
