"""The diffusers PixArt block re-statement (PixArtBlockHook, ecad_core/diffusers/adapters) on a tiny random PixArt-α:
a reused unit's norm + modulation is skipped, the output equals the module-output ceiling bit for bit,
blocks it does not cover are hooked at their modules, and a block that changed fails loudly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.block_hook_loops import ceiling_loop, counted_calls, engine_loop

from bench import models
from ecad_core import Schedule
from ecad_core.diffusers.adapters import find_diffusers_units
from ecad_core.diffusers.adapters.pixart import PixArtBlockHook
from ecad_core.errors import SelfCheckError
from ecad_core.hooks import UnitHook, forget_verified

STEPS = 4


@pytest.fixture(scope="module")
def alpha():
    with torch.no_grad():
        yield models.diffusers_pixart("alpha", 64, tiny=True, device="cpu", dtype=torch.float32, steps=STEPS)


def _schedule(den, seed=0):
    layout = find_diffusers_units(den.model).layout
    bits = np.random.default_rng(seed).random((STEPS, layout.n_units)) < 0.4
    bits[:, 0] = False  # block 0's attn1 reused from step 1 on
    return Schedule(layout, bits, name=f"random-{seed}")


def _norms(den):
    return [
        ((i, name), getattr(blk, name))
        for i, blk in enumerate(den.model.transformer_blocks)
        for name in ("norm1", "norm2")
    ]


def test_reused_units_skip_their_norm_and_modulation(alpha):
    forget_verified()  # every block checked again (once) in this loop
    sched = _schedule(alpha)
    with counted_calls(_norms(alpha)) as counts:
        x, stats, kinds = engine_loop(alpha, sched)
    kinds = set(kinds)
    assert kinds == {PixArtBlockHook}
    assert torch.equal(x, ceiling_loop(alpha, sched))
    bits = sched.effective_bits()
    assert stats.total_reused == int((~bits).sum()) and int(stats.fallback.sum()) == 0
    for i in range(len(alpha.model.transformer_blocks)):
        check = 2  # each block's first call also runs its own forward and the re-statement, engine off
        assert counts.get((i, "norm1"), 0) == int(bits[:, 3 * i].sum()) + check, i
        assert counts.get((i, "norm2"), 0) == int(bits[:, 3 * i + 2].sum()) + check, i
    assert all("forward" not in b.__dict__ for b in alpha.model.transformer_blocks)  # removed cleanly


def test_a_block_with_a_wrapped_forward_is_hooked_at_its_modules(alpha):
    blk = alpha.model.transformer_blocks[3]
    seen = []
    own = type(blk).forward

    def wrapped(*a, **k):  # as accelerate's offload hook wraps a module with parameters of its own
        seen.append(1)
        return own(blk, *a, **k)

    blk.forward = wrapped
    try:
        sched = _schedule(alpha, seed=1)
        x, stats, kinds = engine_loop(alpha, sched)
        assert set(kinds) == {PixArtBlockHook, UnitHook} and len(seen) == STEPS
        assert blk.forward is wrapped
    finally:
        del blk.forward
    assert torch.equal(x, ceiling_loop(alpha, sched))
    assert stats.total_reused == int((~sched.effective_bits()).sum())


def test_a_changed_block_fails_the_first_use_check(alpha, monkeypatch):
    cls = type(alpha.model.transformer_blocks[0])
    original = cls.forward

    def changed(self, hidden_states, *a, **k):  # e.g. a diffusers release that scales the residual
        return original(self, hidden_states, *a, **k) * 1.0001

    monkeypatch.setattr(cls, "forward", changed)
    with pytest.raises(SelfCheckError, match="re-statement differs from transformer_blocks.0's own forward"):
        engine_loop(alpha, _schedule(alpha))
    assert all("forward" not in b.__dict__ for b in alpha.model.transformer_blocks)


def test_a_block_that_differs_after_the_first_fails_too(alpha, monkeypatch):
    # a mismatch can spare block 0 (in fp16, rounding by layout is data-dependent): every block is checked
    cls = type(alpha.model.transformer_blocks[0])
    original, odd = cls.forward, alpha.model.transformer_blocks[3]

    def changed(self, hidden_states, *a, **k):
        out = original(self, hidden_states, *a, **k)
        return out * 1.0001 if self is odd else out

    monkeypatch.setattr(cls, "forward", changed)
    with pytest.raises(SelfCheckError, match="re-statement differs from transformer_blocks.3's own forward"):
        engine_loop(alpha, _schedule(alpha))
    monkeypatch.undo()
    _x, stats, _ = engine_loop(alpha, _schedule(alpha))  # the class's own forward again: checked anew, passes
    assert stats.total_reused > 0


def _reused_inputs(preset: str, steps: int) -> int:
    """Reused attn1 + ff unit calls of ``preset`` replayed at ``steps`` steps (each skips 4 device ops)."""
    from bench.common import SCHEDULES, replay_bits
    from ecad_core import load_schedule

    bits = replay_bits(load_schedule(SCHEDULES / f"{preset}.json"), steps)
    return int((~bits[:, 0::3]).sum() + (~bits[:, 2::3]).sum())


@pytest.mark.parametrize("path,res", [("diffusers", 64), pytest.param("comfy", 384, marks=pytest.mark.comfy)])
def test_op_counts_engine_launches_four_fewer_ops_per_reused_input_than_any_module_cache(path, res, request):
    from bench import op_counts

    if path == "comfy":
        request.getfixturevalue("comfy_dir")
    preset = "pixart-alpha-256-fastest"
    v = op_counts.main(["--path", path, "--res", str(res), "--steps", "4", "--presets", preset])["variants"]

    def compute_ops(name):
        # copies aside: ComfyUI's re-statement trades LayerNorm's internal input copies (not dispatched, so
        # not counted) for one visible copy per block (tests/test_comfy_pixart_block.py)
        r = v[name]
        return r["ops"] - r["by_op"].get("aten.clone", 0) - r["by_op"].get("aten.copy_", 0)

    eng = compute_ops(f"{'engine' if path == 'diffusers' else 'pack'} {preset}")
    ceil = compute_ops(f"any module cache {preset}")  # the module-output cache: builds every reused input
    # steady state: all recompute is no cache; the one-off first image runs every block twice more (its own
    # forward and the re-statement, engine off), so at most two calls' worth of operations
    r = v["patched, all recompute"]
    assert compute_ops("patched, all recompute") == compute_ops("no cache")
    assert v["no cache"]["ops"] / 4 < r["first_image_ops"] - r["ops"] <= 2 * v["no cache"]["ops"] / 4
    # LayerNorm, 1 + scale, × (1 + scale), + shift: skipped for every reused attn1 / ff
    assert ceil - eng == 4 * _reused_inputs(preset, 4)
    assert compute_ops(f"ceiling {preset}") == eng  # the zero-overhead ceiling skips the same (bench/ceiling.py)
