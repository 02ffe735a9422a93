"""HunyuanVideo 1.5 (issue #18), in-process on ComfyUI's own ``HunyuanVideo`` built as 1.5 (tiny, random weights):
the analytic MACs equal the hook-counted MACs of every unit and of the fixed part (single- and multi-frame
latents, with and without single-stream blocks); the adapter serves 1.5 (not HunyuanVideo 1.0) with FLUX's block
re-statements, which reproduce ComfyUI's own blocks; the header probe finds the family."""

from __future__ import annotations

import dataclasses
import importlib
import re

import pytest
import torch

from bench import bench_comfy
from ecad_core import make_layout
from ecad_core.schedule.model_files import layout_of_keys

CFG = dict(
    in_channels=65,
    out_channels=32,
    vec_in_dim=None,
    context_in_dim=64,
    hidden_size=128,
    mlp_ratio=4.0,
    num_heads=1,
    axes_dim=[16, 56, 56],
    theta=256,
    patch_size=[1, 1, 1],
    qkv_bias=True,
    guidance_embed=False,
    byt5=False,
    meanflow=False,
    use_cond_type_embedding=True,
    vision_in_dim=1152,
)


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    bench_comfy.import_comfy("cpu")
    adapters, _, _ = bench_comfy.pack_modules()
    return adapters


def _hv(depth=2, single=0, **kw):
    import comfy.ldm.hunyuan_video.model as hm
    import comfy.ops

    torch.manual_seed(0)
    if "meanflow_sum" in {f.name for f in dataclasses.fields(hm.HunyuanVideoParams)}:
        kw = {"meanflow_sum": False, **kw}  # ComfyUI 0.33 made it required
    m = hm.HunyuanVideo(
        depth=depth,
        depth_single_blocks=single,
        **{**CFG, **kw},
        operations=comfy.ops.disable_weight_init,
        dtype=torch.float32,
    ).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.fill_(1.0) if name.endswith(("scale", "norm.weight")) else p.normal_(0, 0.02)
    return m


def _unit_of(name: str):
    m = re.match(r"double_blocks\.(\d+)\.(img_attn|txt_attn|img_mlp|txt_mlp)(\.|$)", name)
    if m:
        comp = {"img_mlp": "full_ff", "txt_mlp": "full_ff_context"}.get(m.group(2), "full_attn")
        return (m.group(1), comp)
    m = re.match(r"single_blocks\.(\d+)\.(linear1|linear2)$", name)
    if m:
        return (f"single_{m.group(1)}", m.group(2))
    return "fixed"


def _count(m, call):
    """MACs by unit from hooks on ComfyUI's Linear / Conv3d layers (a single block's ``linear1`` split into its
    q/k/v and MLP-input rows), and the attention products of the blocks' attention function."""
    import comfy.ldm.flux.layers as layers

    linear: dict = {}
    attn: dict = {}
    current: list = []
    hooks = []

    def add(key, n):
        linear[key] = linear.get(key, 0) + n

    for name, mod in m.named_modules():
        key = _unit_of(name)
        if isinstance(mod, torch.nn.Linear):
            if key != "fixed" and key[1] == "linear1":
                D = mod.in_features

                def hook(mod, inp, out, b=key[0], D=D):
                    rows = inp[0].numel() // D
                    add((b, "single_attn"), rows * D * 3 * D)
                    add((b, "single_proj_mlp"), rows * D * (mod.out_features - 3 * D))

            elif key != "fixed" and key[1] == "linear2":

                def hook(mod, inp, out, key=(key[0], "single_proj_out")):
                    add(key, inp[0].numel() * mod.out_features)

            else:

                def hook(mod, inp, out, key=key):
                    add(key, inp[0].numel() * mod.out_features)

            hooks.append(mod.register_forward_hook(hook))
        elif isinstance(mod, torch.nn.Conv3d):

            def hook(mod, inp, out, key=key):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
                add(key, out.numel() * mod.in_channels * k)

            hooks.append(mod.register_forward_hook(hook))
        mb = re.fullmatch(r"(double|single)_blocks\.(\d+)", name)
        if mb:
            ukey = (mb.group(2), "full_attn") if mb.group(1) == "double" else (f"single_{mb.group(2)}", "single_attn")
            hooks.append(
                mod.register_forward_pre_hook(lambda mod, a, k, ukey=ukey: current.append(ukey), with_kwargs=True)
            )
            hooks.append(mod.register_forward_hook(lambda mod, a, o: [current.pop(), None][1]))
    original = layers.attention

    def counting(q, k, v, *a, **kw):
        attn[current[-1]] = (
            attn.get(current[-1], 0) + 2 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
        )
        return original(q, k, v, *a, **kw)

    layers.attention = counting
    try:
        with torch.no_grad():
            call()
    finally:
        layers.attention = original
        for h in hooks:
            h.remove()
    return linear, attn


@pytest.mark.parametrize(("frames", "single"), [(1, 0), (3, 0), (2, 1)])
def test_hunyuan_video15_formula_matches_hooked_comfy_modules(comfy, frames, single):
    m = _hv(single=single)
    ad = comfy.adapter_of(m)
    assert type(ad).__name__ == "HunyuanVideo15Comfy"
    assert ad.layout.describe() == make_layout("hunyuan_video15", 2, single).describe()
    step_costs = importlib.import_module("comfyui_ecad_bench.ecad_core.costs").step_costs  # the pack's own Arch
    arch = ad.arch("tiny-hv")
    arch = dataclasses.replace(arch, extra={**arch.extra, "frames": frames})
    B, T, h, w = 2, 7, 64, 96  # latent 4x6 per frame, patch 1: 24 tokens per frame
    x = torch.randn(B, 32, frames, h // 16, w // 16)  # noise; the 33 condition channels come from concat_cond
    x = torch.cat([x, torch.zeros(B, 33, frames, h // 16, w // 16)], dim=1)
    ctx = torch.randn(B, T, 64)
    linear, attn = _count(m, lambda: m(x, torch.tensor([0.5] * B), ctx))
    ecad = step_costs(arch, h, w, batch=B, text_tokens=T, mode="ecad")
    full = step_costs(arch, h, w, batch=B, text_tokens=T, mode="full")
    units = ecad.layout.units()
    assert set(linear) == set(units) | {"fixed"}
    assert [linear[u] for u in units] == ecad.unit.tolist()
    assert linear["fixed"] == ecad.fixed
    assert [linear[u] + attn.get(u, 0) for u in units] == full.unit.tolist()
    assert "fixed" not in attn


def test_hunyuan_video_1_0_stays_block_level_and_header_probe(comfy):
    m10 = _hv(vision_in_dim=None, use_cond_type_embedding=False, in_channels=16, out_channels=16)
    assert type(comfy.adapter_of(m10)).__name__ == "DitBlocksComfy"
    keys = list(_hv(single=1).state_dict())
    assert layout_of_keys(keys) == (make_layout("hunyuan_video15", 2, 1), "hunyuanvideo-1.5")
    found = layout_of_keys(list(m10.state_dict()))  # 1.0: not this family's (block level, no header detection)
    assert found is None or found[0].family != "hunyuan_video15"


def test_restatement_reproduces_comfy_blocks_and_reuses(comfy):
    """The FLUX re-statements on HunyuanVideo 1.5's blocks: all-recompute is ComfyUI's output bit for bit with no
    fallback, a mixed schedule reuses its units and stays close."""
    import numpy as np

    engine_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.engine")
    schedule_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.schedule")
    m = _hv()
    ad = comfy.adapter_of(m)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 65, 2, 4, 4, generator=g) for _ in range(3)]
    ctx = torch.randn(1, 5, 64, generator=g)
    opts: dict = {"patches_replace": {}}

    def loop(before=None):
        outs = []
        with torch.no_grad():
            for i, x in enumerate(xs):
                if before:
                    before(i)
                outs.append(m(x, torch.tensor([1.0 - 0.3 * i]), ctx, transformer_options=dict(opts)))
        return outs

    plain = loop()
    layout = ad.layout
    for bits, want_reused in ((np.ones((3, layout.n_units), bool), 0), (None, None)):
        if bits is None:
            bits = np.ones((3, layout.n_units), bool)
            bits[1:, 0] = bits[2, 4] = False  # block 0's attention from step 1 on, block 1's image MLP at step 2
            want_reused = 3
        sched = schedule_mod.Schedule(layout, bits, name="t")
        eng = engine_mod.CacheEngine(sched)
        run = type("Run", (), {"engine": eng, "capture": None, "first_eval_checks": [], "pre_run_checks": []})()
        mp = bench_comfy.Patcher(m, opts)
        ad.install(mp, run)

        def pre(i, eng=eng):
            if i == 0:
                eng.begin_run(3)
            eng.set_position(i, ("cond",))

        try:
            outs = loop(pre)
            stats = eng.end_run()
        finally:
            mp.unpatch()
        assert run.hook_path.off is None, run.hook_path.off  # the re-statement matched ComfyUI's blocks
        assert stats.total_reused == want_reused
        if want_reused == 0:
            assert all(torch.equal(a, b) for a, b in zip(outs, plain))
        else:
            assert torch.equal(outs[0], plain[0]) and not torch.equal(outs[2], plain[2])
            assert (outs[2] - plain[2]).abs().max() < 0.5 * plain[2].abs().max()


def test_block_level_all_recompute_launches_what_the_model_does(comfy):
    """Block-level reuse (HunyuanVideo 1.0) with everything recomputed copies no input and takes no residual: the
    same device operations as the unpatched model, the same output, nothing stored; a reusing schedule still
    reuses."""
    import numpy as np

    from bench.op_counts import OpCounter

    engine_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.engine")
    schedule_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.schedule")
    m = _hv(vision_in_dim=None, use_cond_type_embedding=False, in_channels=16, out_channels=16)
    ad = comfy.adapter_of(m)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 16, 1, 4, 4, generator=g) for _ in range(3)]
    ctx = torch.randn(1, 5, 64, generator=g)

    def loop(opts, before=None):
        counter, outs = OpCounter(), []
        with torch.no_grad(), counter:
            for i, x in enumerate(xs):
                if before:
                    before(i)
                outs.append(m(x, torch.tensor([1.0 - 0.3 * i]), ctx, transformer_options=dict(opts)))
        return outs, sum(counter.ops.values())

    plain, plain_ops = loop({"patches_replace": {}})
    for reuse in (False, True):
        bits = np.ones((3, ad.layout.n_units), bool)
        if reuse:
            bits[2, 0] = False  # block 0 reused at step 2: step 1 keeps its residual
        eng = engine_mod.CacheEngine(schedule_mod.Schedule(ad.layout, bits, name="t"))
        run = type("Run", (), {"engine": eng, "capture": None, "first_eval_checks": [], "pre_run_checks": []})()
        opts: dict = {"patches_replace": {}}
        mp = bench_comfy.Patcher(m, opts)
        ad.install(mp, run)

        def pre(i, eng=eng):
            if i == 0:
                eng.begin_run(3)
            eng.set_position(i, ("cond",))

        try:
            outs, ops = loop(opts, pre)
            peak = eng.cache_bytes()
            stats = eng.end_run()
        finally:
            mp.unpatch()
        if not reuse:
            assert all(torch.equal(a, b) for a, b in zip(outs, plain))
            assert (ops, stats.total_reused, peak) == (plain_ops, 0, 0)
        else:
            assert stats.total_reused == 1 and ops < plain_ops  # a skipped block outweighs one kept residual
