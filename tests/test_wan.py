"""Wan 2.1/2.2 (issue #18), in-process on ComfyUI's own ``WanModel`` (tiny, random weights): the analytic MACs
equal the hook-counted MACs of every unit and of the fixed part, for single- and multi-frame latents; the header
probe finds the family; the adapter serves Wan at component level and its units are ComfyUI's modules."""

from __future__ import annotations

import dataclasses
import importlib
import re

import numpy as np
import pytest
import torch

from bench import bench_comfy
from ecad_core import make_layout
from ecad_core.costs import step_costs
from ecad_core.schedule.model_files import layout_of_keys

CFG = dict(patch_size=(1, 2, 2), dim=128, ffn_dim=256, freq_dim=256, text_dim=64, in_dim=16, out_dim=16, num_heads=2)


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    bench_comfy.import_comfy("cpu")
    adapters, _, _ = bench_comfy.pack_modules()
    return adapters


def _wan(model_type="t2v", layers=2, **kw):
    import comfy.ldm.wan.model as wm
    import comfy.ops

    torch.manual_seed(0)
    m = wm.WanModel(
        model_type=model_type,
        num_layers=layers,
        **{**CFG, **kw},
        operations=comfy.ops.disable_weight_init,
        dtype=torch.float32,
    ).eval()
    with torch.no_grad():
        for _, p in m.named_parameters():
            p.normal_(0, 0.02)
    return m


def _count(m, call):
    """MACs by unit ((block, component) or "fixed") from hooks on ComfyUI's Linear / Conv3d layers, and the
    attention products (QK^T and AV) of ComfyUI's attention function."""
    import comfy.ldm.wan.model as wm

    linear: dict = {}
    attn: dict = {}
    current: list = []
    hooks = []
    for name, mod in m.named_modules():
        mt = re.match(r"blocks\.(\d+)\.(self_attn|cross_attn|ffn)(\.|$)", name)
        key = (mt.group(1), mt.group(2)) if mt else "fixed"
        if isinstance(mod, torch.nn.Linear):

            def hook(mod, inp, out, key=key):
                linear[key] = linear.get(key, 0) + inp[0].numel() * mod.out_features

            hooks.append(mod.register_forward_hook(hook))
        elif isinstance(mod, torch.nn.Conv3d):

            def hook(mod, inp, out, key=key):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
                linear[key] = linear.get(key, 0) + out.numel() * mod.in_channels * k

            hooks.append(mod.register_forward_hook(hook))
        if mt and name.endswith(("self_attn", "cross_attn")):
            hooks.append(mod.register_forward_pre_hook(lambda mod, a, key=key: current.append(key)))
            hooks.append(mod.register_forward_hook(lambda mod, a, o: [current.pop(), None][1]))
    original = wm.optimized_attention

    def counting(q, k, v, heads, *a, **kw):
        attn[current[-1]] = attn.get(current[-1], 0) + 2 * q.shape[0] * q.shape[1] * k.shape[1] * q.shape[2]
        return original(q, k, v, heads, *a, **kw)

    wm.optimized_attention = counting
    try:
        with torch.no_grad():
            call()
    finally:
        wm.optimized_attention = original
        for h in hooks:
            h.remove()
    return linear, attn


@pytest.mark.parametrize(("model_type", "frames"), [("t2v", 1), ("t2v", 3), ("i2v", 2)])
def test_wan_formula_matches_hooked_comfy_modules(comfy, model_type, frames):
    m = _wan(model_type, in_dim=36 if model_type == "i2v" else 16)
    ad = comfy.adapter_of(m)
    assert type(ad).__name__ == "WanComfy" and ad.layout.describe() == make_layout("wan", 2).describe()
    step_costs = importlib.import_module("comfyui_ecad_bench.ecad_core.costs").step_costs  # the pack's own Arch
    arch = ad.arch("tiny-wan")
    arch = dataclasses.replace(arch, extra={**arch.extra, "frames": frames})
    B, T, h, w = 2, 7, 64, 96  # latent 8x12 per frame: 4x6 tokens per frame
    x = torch.randn(B, arch.latent_channels, frames, h // 8, w // 8)
    ctx = torch.randn(B, T, 64)
    kw = {"clip_fea": torch.randn(B, 257, 1280)} if model_type == "i2v" else {}
    linear, attn = _count(m, lambda: m(x, torch.tensor([500.0] * B), ctx, **kw))
    ecad = step_costs(arch, h, w, batch=B, text_tokens=T, mode="ecad")
    full = step_costs(arch, h, w, batch=B, text_tokens=T, mode="full")
    units = ecad.layout.units()
    assert set(linear) == set(units) | {"fixed"}
    assert [linear[u] for u in units] == ecad.unit.tolist()
    assert linear["fixed"] == ecad.fixed
    assert [linear[u] + attn.get(u, 0) for u in units] == full.unit.tolist()
    assert "fixed" not in attn


def test_adapter_units_are_comfy_modules_and_variants(comfy):
    m = _wan()
    ad = comfy.adapter_of(m)
    assert [(u.block, u.component, u.path) for u in ad.units()[:3]] == [
        ("blocks.0", "self_attn", "blocks.0.self_attn"),
        ("blocks.0", "cross_attn", "blocks.0.cross_attn"),
        ("blocks.0", "ffn", "blocks.0.ffn"),
    ]
    assert ad.arch_hint is None and "Wan" in ad.kind
    # the real sizes are named (schedules' model hint), Wan 2.2's 48-channel model with its 16-pixel latent
    m.dim, m.out_dim = 3072, 48
    m.blocks = torch.nn.ModuleList(list(m.blocks) * 15)
    assert comfy.adapter_of(m).arch_hint == "wan2.2-ti2v-5b"


def test_header_probe_finds_wan():
    m_keys = [
        "head.modulation",
        "head.head.weight",
        "patch_embedding.weight",
        *(f"blocks.{i}.{c}" for i in range(3) for c in ("self_attn.q.weight", "cross_attn.q.weight", "ffn.0.weight")),
    ]
    assert layout_of_keys(m_keys) == (make_layout("wan", 3), "wan")
    assert layout_of_keys(["model.diffusion_model." + k for k in m_keys]) == (make_layout("wan", 3), "wan")
    diffusers = ["condition_embedder.text_embedder.linear_1.weight", "blocks.0.attn1.to_q.weight", "blocks.4.ffn.x"]
    assert layout_of_keys(diffusers) == (make_layout("wan", 5), "wan")
    # the real models' analytic costs: a 14B step is ~ 10x a 1.3B step at the same size
    big, small = step_costs("wan2.1-t2v-14b", 480, 832), step_costs("wan2.1-t2v-1.3b", 480, 832)
    assert 8 < big.full_step / small.full_step < 14


def test_comparison_grid_shows_a_videos_frames_side_by_side():
    from ecad_core.evaluation.grid import as_display, comparison_grid

    v = torch.rand(16, 2, 4, 5)  # a Wan latent sample: [C, frames, H, W]
    img = as_display(v)
    assert img.shape == (3, 4, 10)
    x = torch.cat([v[:3, 0], v[:3, 1]], dim=2)  # frame 0 | frame 1, first three channels
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    assert torch.allclose(img, (x - lo) / (hi - lo))
    grid = comparison_grid([v], [("s", [v])], rows=1)
    assert grid.shape[1] == 3 * 10 + 2 * 2


@pytest.mark.parametrize(
    ("layout", "cross", "attention"),
    [
        (make_layout("wan", 4), "cross_attn", {"self_attn", "cross_attn"}),
        (make_layout("hunyuan_video15", 4), "full_ff_context", {"full_attn"}),
        (make_layout("hunyuan_video15", 3, 2), "full_ff_context", {"full_attn", "single_attn"}),
    ],
)
def test_heuristic_seeds_use_the_video_families_roles(layout, cross, attention):
    # by the family record's roles, not by name lists: TGATE-like seeds gate its cross-attention-like component,
    # attention-every-n recomputes its attention components together (where there are two kinds)
    from ecad_core.search.problem import GenomeSpace
    from ecad_core.search.sampling import heuristic_seeds

    seeds = {s.name: s for s in heuristic_seeds(GenomeSpace(layout, 10))}
    comps = np.array([c for _, c in layout.iter_units()])
    tgate = seeds[f"tgate-like-{cross}-gate-5-sp-1"].bits
    assert not tgate[5:, comps == cross].any() and tgate[:, comps != cross].all()
    if len(attention) >= 2:
        att = seeds["cache-attention-every-2"].bits
        is_att = np.isin(comps, sorted(attention))
        assert att[1::2][:, is_att].sum() == 0 and att[:, ~is_att].all() and att[::2].all()
    else:  # one attention kind: no attention-every-n seed
        assert "cache-attention-every-2" not in seeds


def test_diffusers_wan_units_at_their_modules():
    from diffusers import WanTransformer3DModel

    from ecad_core import Schedule, apply

    torch.manual_seed(0)
    tr = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=24,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
    ).eval()
    lay = make_layout("wan", 2)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(3, 1, 4, 2, 8, 8, generator=g)  # one 2-frame latent per step
    ctx = torch.randn(1, 5, 24, generator=g)

    def sample():
        return [tr(x, timestep=torch.tensor([t]), encoder_hidden_states=ctx)[0] for x, t in zip(xs, (900, 600, 300))]

    bits = np.ones((3, lay.n_units), bool)
    bits[1:, 0] = bits[2, 5] = False  # block 0's self_attn from step 1, block 1's ffn at step 2
    s = Schedule(lay, bits, name="mixed")
    with torch.no_grad():
        ref = sample()
        with apply(tr, Schedule.full(lay, 3)):
            assert all(torch.equal(a, b) for a, b in zip(ref, sample()))
        with apply(tr, s) as h:
            outs = sample()
            stats = h.finish_run()
    assert torch.equal(outs[0], ref[0]) and not torch.equal(outs[2], ref[2])
    assert stats.total_reused == 3
    assert all("forward" not in m.__dict__ for m in tr.modules())


def test_diffusers_wan_config_macs_match_hooked_modules():
    from diffusers import WanTransformer3DModel

    from ecad_core.costs import Arch

    torch.manual_seed(0)
    tr = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=24,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
    ).eval()
    arch = Arch.from_diffusers_config(tr.config, text_tokens=5)
    assert (arch.family, arch.hidden, arch.depth, arch.token_in, arch.ff_dim) == ("wan", 32, 2, 16, 64)
    arch = dataclasses.replace(arch, extra={"frames": 2})
    linear: dict = {}
    hooks = []
    for name, mod in tr.named_modules():
        mt = re.match(r"blocks\.(\d+)\.(attn1|attn2|ffn)(\.|$)", name)
        key = (mt.group(1), {"attn1": "self_attn", "attn2": "cross_attn"}.get(mt.group(2), "ffn")) if mt else "fixed"
        if isinstance(mod, torch.nn.Linear):
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, key=key: linear.__setitem__(key, linear.get(key, 0) + i[0].numel() * m.out_features)
                )
            )
        elif isinstance(mod, torch.nn.Conv3d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, key=key, k=k: linear.__setitem__(
                        key, linear.get(key, 0) + o.numel() * m.in_channels * k
                    )
                )
            )
    B, h, w = 2, 64, 96
    with torch.no_grad():
        tr(
            torch.randn(B, 4, 2, h // 8, w // 8),
            timestep=torch.tensor([500] * B),
            encoder_hidden_states=torch.randn(B, 5, 24),
        )
    for hk in hooks:
        hk.remove()
    ecad = step_costs(arch, h, w, batch=B, text_tokens=5)
    assert [linear[u] for u in ecad.layout.units()] == ecad.unit.tolist()
    assert linear["fixed"] == ecad.fixed
