"""The ComfyUI PixArt block re-statement (nodes/adapters/pixart.py) on ComfyUI's own PixArtMS (tiny, random weights):
reused units' norm + modulation are skipped and the image equals the module-level cache's (a block that no longer
matches ComfyUI's: tests/test_comfy_upstream_changes.py)."""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest
import torch

from bench import bench_comfy
from bench.ceiling import CeilingCache

STEPS = 3


def _comfy(dtype):
    bench_comfy.import_comfy("cpu")
    adapters, engine_mod, schedule_mod = bench_comfy.pack_modules()
    with torch.no_grad():
        den = bench_comfy.comfy_pixart("alpha", 384, tiny=True, device="cpu", dtype=dtype, steps=STEPS)
    return den, adapters, engine_mod, schedule_mod


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    return _comfy(torch.float32)


class _Run:
    def __init__(self, engine):
        self.engine, self.capture = engine, None
        self.first_eval_checks, self.pre_run_checks = [], []


def _schedule(schedule_mod, layout, seed=0):
    rng = np.random.default_rng(seed)
    bits = rng.random((STEPS, layout.n_units)) < 0.4
    bits[:, 0] = False  # block 0: attn1 reused from step 1 on
    return schedule_mod.Schedule(layout, bits, name=f"random-{seed}")


def _patched_loop(comfy, sched, mp=None, counts=None):
    den, adapters, engine_mod, _ = comfy
    ad = adapters.pixart.PixArtComfy(den.model)
    eng = engine_mod.CacheEngine(sched)
    mp = mp or bench_comfy.Patcher(den.model, {})
    ad.install(mp, _Run(eng))
    hooks = []
    if counts is not None:
        for i, blk in enumerate(den.model.blocks):
            for name in ("norm1", "norm2"):
                hooks.append(
                    getattr(blk, name).register_forward_hook(
                        lambda *_, k=(i, name): counts.__setitem__(k, counts.get(k, 0) + 1)
                    )
                )

    def pre(i):
        if i == 0:
            eng.begin_run(STEPS)
        eng.set_position(i, ("cond", "uncond"))

    try:
        with torch.no_grad():
            x = den.loop(pre)
        stats = eng.end_run()
    finally:
        mp.unpatch()
        for h in hooks:
            h.remove()
    return x, stats, mp


def test_block_restatement_equals_module_cache_and_skips_reused_inputs(comfy):
    den, adapters, _, schedule_mod = comfy
    sched = _schedule(schedule_mod, adapters.pixart.PixArtComfy(den.model).layout)
    importlib.import_module("comfyui_ecad_bench.ecad_core.hooks").forget_verified()  # each block checked again
    counts: dict = {}
    x, stats, _mp = _patched_loop(comfy, sched, counts=counts)
    with torch.no_grad(), CeilingCache(den.unit_modules, sched.effective_bits()) as c:
        ref = den.loop(lambda i: setattr(c, "step", i))
    assert torch.equal(x, ref)  # the same ops for every computed unit: bit for bit
    bits = sched.effective_bits()
    assert stats.total_reused == int((~bits).sum()) and int(stats.fallback.sum()) == 0
    # norm1 feeds only attn (unit 3i), norm2 only mlp (3i+2); +2 for each block's check against ComfyUI's block
    for i in range(len(den.model.blocks)):
        check = 2  # each block's first call: ComfyUI's own block and the re-statement, engine off
        assert counts.get((i, "norm1"), 0) == int(bits[:, 3 * i].sum()) + check, i
        assert counts.get((i, "norm2"), 0) == int(bits[:, 3 * i + 2].sum()) + check, i
    assert counts[(0, "norm1")] == 1 + 2  # block 0's attn computed only at step 0
    assert not any(hasattr(b, "forward") and "forward" in b.__dict__ for b in den.model.blocks)  # unpatched


def test_fp16_block_restatement_equals_module_cache(comfy_dir):
    # In fp16 (ComfyUI's PixArt checkpoints) a linear rounds by its input's layout, as on a GPU: the contiguous
    # stream must not reach cross_attn.q_linear (tests/test_low_precision.py). The first-use check compares block
    # 0 with ComfyUI's; the ceiling runs ComfyUI's blocks, so every computed unit of every block is compared too.
    den, adapters, _engine_mod, schedule_mod = comfy = _comfy(torch.float16)
    assert any(p.dim() == 1 and p.abs().sum() > 0 for p in den.model.parameters())  # biases are not zero
    sched = _schedule(schedule_mod, adapters.pixart.PixArtComfy(den.model).layout)
    x, stats, _ = _patched_loop(comfy, sched)
    with torch.no_grad(), CeilingCache(den.unit_modules, sched.effective_bits()) as c:
        ref = den.loop(lambda i: setattr(c, "step", i))
    assert x.dtype == torch.float16 and torch.equal(x, ref)
    assert stats.total_reused == int((~sched.effective_bits()).sum())


def test_all_recompute_block_equals_comfyui_block(comfy):
    den, adapters, _, schedule_mod = comfy
    layout = adapters.pixart.PixArtComfy(den.model).layout
    with torch.no_grad():
        plain = den.loop()
    x, stats, _ = _patched_loop(comfy, schedule_mod.Schedule.full(layout, STEPS))
    assert torch.equal(x, plain) and stats.total_reused == 0


def test_another_nodes_block_patch_is_kept_and_its_modules_are_cached(comfy, caplog):
    den, adapters, _, schedule_mod = comfy
    sched = _schedule(schedule_mod, adapters.pixart.PixArtComfy(den.model).layout, seed=1)
    blk0 = den.model.blocks[0]
    calls = []

    def foreign(*a, **k):  # another pack's block patch: must stay in place and still run
        calls.append(1)
        return type(blk0).forward(blk0, *a, **k)

    mp = bench_comfy.Patcher(den.model, {})
    mp.add_object_patch("diffusion_model.blocks.0.forward", foreign)
    with caplog.at_level(logging.INFO, logger="ecad"):
        x, stats, _ = _patched_loop(comfy, sched, mp=mp)
    assert "block 0's forward is already patched by another node" in caplog.text
    assert len(calls) == STEPS
    assert stats.total_reused == int((~sched.effective_bits()).sum())
    with torch.no_grad(), CeilingCache(den.unit_modules, sched.effective_bits()) as c:
        ref = den.loop(lambda i: setattr(c, "step", i))
    assert torch.equal(x, ref)


def test_a_later_ecad_apply_replaces_the_earlier_block_patch(comfy):
    den, adapters, engine_mod, schedule_mod = comfy
    layout = adapters.pixart.PixArtComfy(den.model).layout
    mp = bench_comfy.Patcher(den.model, {})
    path = adapters.base.HookPath("PixArt", "module caching")
    first = adapters.pixart.PixArtRestatement(den.model, _Run(None), path).forward_for(0)
    mp.object_patches["diffusion_model.blocks.0.forward"] = first  # as a clone of an ECAD-patched model holds
    eng = engine_mod.CacheEngine(_schedule(schedule_mod, layout))
    adapters.pixart.PixArtComfy(den.model).install(mp, _Run(eng))
    try:
        patched = mp.object_patches["diffusion_model.blocks.0.forward"]
        assert patched is not first and patched.ecad_patch
        # the component modules carry only ECAD's own (dormant) fallback patches, no "another node" path
        mods = [fn for k, fn in mp.object_patches.items() if k.endswith((".attn.forward", ".mlp.forward"))]
        assert len(mods) == 2 * len(den.model.blocks) and all(fn.ecad_patch for fn in mods)
    finally:
        mp.unpatch()


def test_restated_blocks_keep_the_stream_contiguous_but_q_linear_sees_comfyuis_layout(comfy):
    # ComfyUI's PixArt passes block 0 a transposed view of the patch embedding and keeps that layout through
    # every residual add (so its LayerNorms copy their inputs and the adds run strided kernels); the
    # re-statement makes the stream contiguous. cross_attn.q_linear must still see ComfyUI's layout: a
    # contiguous input would take F.linear's fused-bias addmm, which rounds differently on a GPU.
    den, adapters, _, schedule_mod = comfy
    layout = adapters.pixart.PixArtComfy(den.model).layout
    seen = {"plain": [], "patched": []}

    def probe(key):
        hs = []
        for b in den.model.blocks:
            hs.append(b.norm1.register_forward_pre_hook(lambda m, a, k=key: seen[k].append(("norm1", a[0].stride()))))
            hs.append(
                b.cross_attn.q_linear.register_forward_pre_hook(
                    lambda m, a, k=key: seen[k].append(("q_linear", a[0].stride()))
                )
            )
        return hs

    hs = probe("plain")
    with torch.no_grad():
        plain = den.loop()
    for h in hs:
        h.remove()
    hs = probe("patched")
    try:
        x, _, _ = _patched_loop(comfy, schedule_mod.Schedule.full(layout, STEPS))
    finally:
        for h in hs:
            h.remove()
    assert torch.equal(x, plain)
    n = 2 * len(den.model.blocks) * STEPS
    plain_q = [s for k, s in seen["plain"] if k == "q_linear"]
    patched = seen["patched"][-n:]  # the sampling calls (the check's two block runs come first)
    assert [s for k, s in patched if k == "q_linear"] == plain_q
    assert all(s[-1] != 1 for s in plain_q)  # ComfyUI v0.3.75 itself: transposed throughout
    _B, N, C = den.x0.shape[0], (den.x0.shape[-1] // 2) ** 2, den.model.hidden_size
    assert all(s == (N * C, C, 1) for k, s in patched if k == "norm1")  # contiguous stream
