"""The diffusers FLUX block re-statements (FluxDoubleBlockHook / FluxSingleBlockHook, ecad_core/diffusers/adapters) on a
tiny random FLUX.1-dev (19 double + 38 single blocks): a reused unit's norm + modulation (and a reused proj_out's
activation + concatenation) is not computed, the output equals the module-output ceiling bit for bit, blocks the
re-statement does not cover are hooked at their modules, and a block that changed fails loudly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.block_hook_loops import ceiling_loop, counted_calls, engine_loop

from bench import models
from ecad_core import Schedule
from ecad_core.diffusers.adapters import find_diffusers_units
from ecad_core.diffusers.adapters.flux import FluxDoubleBlockHook, FluxSingleBlockHook
from ecad_core.errors import SelfCheckError
from ecad_core.hooks import UnitHook, forget_verified

STEPS = 4
ND, NS = 19, 38


@pytest.fixture(scope="module")
def flux():
    with torch.no_grad():
        yield models.diffusers_flux(64, tiny=True, device="cpu", dtype=torch.float32, steps=STEPS)


def _schedule(den, seed=0):
    layout = find_diffusers_units(den.model).layout
    bits = np.random.default_rng(seed).random((STEPS, layout.n_units)) < 0.4
    bits[:, 3 * ND : 3 * ND + 3] = [False, False, True]  # single block 0: attn + mlp reused, proj_out computed
    return Schedule(layout, bits, name=f"random-{seed}")


def _input_builders(den):
    """The modules that build each unit's input (and the single blocks' activation), keyed for counting."""
    m = den.model
    watched = [
        (("d", i, k), b.get_submodule(a))
        for i, b in enumerate(m.transformer_blocks)
        for k, a in (("attn", "norm1.norm"), ("ctx", "norm1_context.norm"), ("ff", "norm2"), ("ffc", "norm2_context"))
    ]
    return watched + [
        (("s", j, k), b.get_submodule(a))
        for j, b in enumerate(m.single_transformer_blocks)
        for k, a in (("norm", "norm.norm"), ("act", "act_mlp"))
    ]


def test_reused_units_skip_their_inputs_and_match_the_ceiling(flux):
    forget_verified()  # every block checked again (once) in this loop
    sched = _schedule(flux)
    with counted_calls(_input_builders(flux)) as counts:
        x, stats, kinds = engine_loop(flux, sched)
    assert kinds.count(FluxDoubleBlockHook) == ND and kinds.count(FluxSingleBlockHook) == NS and len(kinds) == ND + NS
    assert torch.equal(x, ceiling_loop(flux, sched))
    bits = sched.effective_bits()
    assert stats.total_reused == int((~bits).sum()) and int(stats.fallback.sum()) == 0
    for i in range(ND):
        check = 2  # each block's first call also runs its own forward and the re-statement, engine off
        for k, u in (("attn", 0), ("ctx", 0), ("ff", 1), ("ffc", 2)):
            assert counts.get(("d", i, k), 0) == int(bits[:, 3 * i + u].sum()) + check, (i, k)
    for j in range(NS):
        check = 2
        b = bits[:, 3 * (ND + j) : 3 * (ND + j) + 3]
        assert counts.get(("s", j, "norm"), 0) == int((b[:, 0] | b[:, 1]).sum()) + check, j
        assert counts.get(("s", j, "act"), 0) == int(b[:, 2].sum()) + check, j
    blocks = list(flux.model.transformer_blocks) + list(flux.model.single_transformer_blocks)
    assert all("forward" not in b.__dict__ for b in blocks)  # removed cleanly


def test_a_block_whose_norm_is_wrapped_is_hooked_at_its_modules(flux):
    blk = flux.model.transformer_blocks[2]
    seen = []
    own = type(blk.norm1).forward

    def wrapped(*a, **k):  # as accelerate's offload hook wraps a module; the re-statement would bypass it
        seen.append(1)
        return own(blk.norm1, *a, **k)

    blk.norm1.forward = wrapped
    try:
        assert FluxDoubleBlockHook.unfit_reason(blk) == "norm1's forward is already wrapped"
        sched = _schedule(flux, seed=1)
        x, stats, kinds = engine_loop(flux, sched)
        assert kinds.count(FluxDoubleBlockHook) == ND - 1 and kinds.count(UnitHook) == 3 and len(seen) == STEPS
    finally:
        del blk.norm1.forward
    assert torch.equal(x, ceiling_loop(flux, sched))
    assert stats.total_reused == int((~sched.effective_bits()).sum())


@pytest.mark.parametrize(
    "which,name",
    [
        ("transformer_blocks", "FLUX double block re-statement differs from transformer_blocks.0"),
        ("single_transformer_blocks", "FLUX single block re-statement differs from single_transformer_blocks.0"),
    ],
)
def test_a_changed_block_fails_the_first_use_check(flux, monkeypatch, which, name):
    cls = type(getattr(flux.model, which)[0])
    original = cls.forward

    def changed(self, hidden_states, *a, **k):  # e.g. a diffusers release that scales the residual
        enc, hid = original(self, hidden_states, *a, **k)
        return enc, hid * 1.0001

    monkeypatch.setattr(cls, "forward", changed)
    with pytest.raises(SelfCheckError, match=name):
        engine_loop(flux, _schedule(flux))
    blocks = list(flux.model.transformer_blocks) + list(flux.model.single_transformer_blocks)
    assert all("forward" not in b.__dict__ for b in blocks)


def test_a_block_with_another_signature_is_not_restated(flux):
    # diffusers before 0.35: single blocks took the joint sequence only, forward(hidden_states, temb, ...)
    blk = flux.model.single_transformer_blocks[0]

    class OlderSingle(type(blk)):
        def forward(self, hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
            raise AssertionError("not called")

    old = OlderSingle.__new__(OlderSingle)
    old.__dict__.update(blk.__dict__)
    why = FluxSingleBlockHook.unfit_reason(old)
    assert why and "forward takes (hidden_states, temb, image_rotary_emb, joint_attention_kwargs)" in why
    assert FluxSingleBlockHook.unfit_reason(blk) is None


def _skipped_ops(preset: str, steps: int) -> int:
    """Operations the re-statements skip for ``preset`` replayed at ``steps`` steps: a reused double-block
    attention skips 2 × (LayerNorm, 1 + scale, ×, + shift), a reused FF 4, a single block whose attn and
    proj_mlp are both reused 4, a reused proj_out its activation and concatenation (2)."""
    from bench.common import SCHEDULES, replay_bits
    from ecad_core import load_schedule

    b = ~replay_bits(load_schedule(SCHEDULES / f"{preset}.json"), steps)
    d, s = b[:, : 3 * ND], b[:, 3 * ND :]
    return int(
        8 * d[:, 0::3].sum()
        + 4 * d[:, 1::3].sum()
        + 4 * d[:, 2::3].sum()
        + 4 * (s[:, 0::3] & s[:, 1::3]).sum()
        + 2 * s[:, 2::3].sum()
    )


def test_op_counts_engine_skips_exactly_the_reused_units_inputs():
    from bench import op_counts

    preset = "flux-dev-256-faster"
    v = op_counts.main(["--model", "flux-dev", "--res", "32", "--steps", "4", "--presets", preset])["variants"]
    # steady state: all recompute is no cache but the step tracker's one device read per image; the one-off
    # first image runs every block twice more (its own forward and the re-statement, engine off)
    r, per_call = v["patched, all recompute"], v["no cache"]["ops"] / 4
    tracker_read = r["ops"] - v["no cache"]["ops"]
    assert tracker_read == 1
    assert per_call < r["first_image_ops"] - r["ops"] <= 2 * per_call
    any_module = v[f"any module cache {preset}"]["ops"]  # the module-output cache builds every reused input
    assert any_module - v[f"engine {preset}"]["ops"] + tracker_read == _skipped_ops(preset, 4)
    assert v[f"ceiling {preset}"]["ops"] + tracker_read == v[f"engine {preset}"]["ops"]  # bench/ceiling.py


def test_comfy_flux_reused_double_block_skips_its_mlp_inputs(comfy_dir):
    """ComfyUI's FLUX (nodes/adapters/flux.py): where a double block's attention is reused, a reused MLP unit's
    input (LayerNorm, 1 + scale, addcmul) is not built. The zero-overhead ceiling (bench/ceiling.py) skips it
    wherever the MLP is reused; the pack still builds it where the block's attention is computed (ComfyUI's own
    block runs, its MLPs cached at their modules). Copies aside (what each keeps differs), pack − ceiling = 3 ×
    those reused MLP units, once the one-off first-use checks are counted."""
    from bench import op_counts
    from bench.common import SCHEDULES, replay_bits
    from ecad_core import load_schedule

    preset = "flux-dev-1024-fast"
    v = op_counts.main(["--path", "comfy", "--model", "flux-dev", "--res", "32", "--steps", "4", "--presets", preset])[
        "variants"
    ]

    def compute_ops(name):
        r = v[name]
        return r["ops"] - r["by_op"].get("aten.clone", 0) - r["by_op"].get("aten.copy_", 0)

    r = v["patched, all recompute"]
    assert compute_ops("patched, all recompute") == compute_ops("no cache")  # steady state
    assert 0 < r["first_image_ops"] - r["ops"] <= 2 * v["no cache"]["ops"] / 4  # each block checked once
    d = ~replay_bits(load_schedule(SCHEDULES / f"{preset}.json"), 4)[:, : 3 * ND]
    assert int((d[:, 0::3] & d[:, 1::3]).sum() + (d[:, 0::3] & d[:, 2::3]).sum()) > 0  # skipped by both
    built_by_pack = int((~d[:, 0::3] & d[:, 1::3]).sum() + (~d[:, 0::3] & d[:, 2::3]).sum())
    assert built_by_pack > 0
    assert compute_ops(f"pack {preset}") - compute_ops(f"ceiling {preset}") == 3 * built_by_pack


def test_chroma_blocks_are_hooked_at_their_modules(caplog):
    # diffusers' Chroma has FLUX's units but pruned adaLN norms (no linear) and another forward signature: the
    # re-statements do not cover it, its units are hooked at their modules (with a log line), output unchanged
    from diffusers import ChromaTransformer2DModel

    from ecad_core import cached

    torch.manual_seed(0)
    m = ChromaTransformer2DModel(
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    ).eval()
    n, L = 16, 8
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, n, 64, generator=g), torch.randn(1, L, 32, generator=g)
    img_ids = torch.stack([torch.zeros(n), torch.arange(n) // 4, torch.arange(n) % 4], dim=1)

    def call(t):
        return m(
            hidden_states=x,
            encoder_hidden_states=ctx,
            timestep=torch.tensor([t]),
            img_ids=img_ids,
            txt_ids=torch.zeros(L, 3),
            return_dict=False,
        )[0]

    with torch.no_grad():
        ref = [call(t) for t in (1.0, 0.5)]
        layout = find_diffusers_units(m).layout
        with caplog.at_level("INFO", logger="ecad"), cached(m, Schedule.full(layout, 2)) as h:
            kinds = {type(k) for k in h._hooks}
            out = [call(t) for t in (1.0, 0.5)]
    assert kinds == {UnitHook} and len(h._hooks) == layout.n_units
    assert "2 flux_double blocks (first: transformer_blocks.0, norm1 is not a plain AdaLayerNormZero)" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(ref, out))


def test_op_counts_refuses_options_it_cannot_serve(capsys):
    from bench import op_counts

    with pytest.raises(SystemExit, match="--per-call compares the PixArt paths"):
        op_counts.main(["--per-call", "--model", "flux-dev"])
    with pytest.raises(SystemExit):
        op_counts.main(["--model", "flux-schnell"])
    assert "invalid choice: 'flux-schnell'" in capsys.readouterr().err
