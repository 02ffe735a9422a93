"""Z-Image / Lumina-Image 2.0 (family ``lumina2``) on ComfyUI's own ``NextDiT``, in-process (small random models):
the analytic MACs against hook-counted MACs, model-file detection, and the adapter's module caching (all-recompute
is ComfyUI's own output, a mixed schedule reuses exactly the scheduled units, bit for bit as an independent
module-level cache). The real-server tests are in tests/test_comfy_lumina2.py."""

from __future__ import annotations

import importlib
import logging
import re

import numpy as np
import pytest
import torch

from bench import bench_comfy
from bench.ceiling import CeilingCache
from ecad_core import make_layout
from ecad_core.costs import step_costs
from ecad_core.schedule.model_files import layout_of_keys
from ecad_core.search.problem import GenomeSpace
from ecad_core.search.sampling import heuristic_seeds

STEPS = 4
# small NextDiTs of both kinds; Z-Image's adaLN reads a 256-wide timestep embedding, so its width is >= 256
LUMINA = dict(dim=96, n_heads=4, n_kv_heads=2, axes_dims=(8, 8, 8), ffn_dim_multiplier=4.0)
ZIMAGE = dict(
    dim=256,
    n_heads=4,
    n_kv_heads=4,
    axes_dims=(16, 24, 24),
    ffn_dim_multiplier=8.0 / 3.0,
    z_image_modulation=True,
    time_scale=1000.0,
    pad_tokens_multiple=32,
)
CAP = 40


class _Run:
    def __init__(self, engine):
        self.engine, self.capture = engine, None
        self.first_eval_checks, self.pre_run_checks = [], []


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    bench_comfy.import_comfy("cpu")
    adapters, engine_mod, schedule_mod = bench_comfy.pack_modules()
    importlib.import_module("comfyui_ecad_bench.nodes.adapters.lumina2")
    return adapters, engine_mod, schedule_mod


def _nextdit(cfg, layers=2, device="cpu", seed=0):
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT

    m = NextDiT(
        patch_size=2,
        in_channels=16,
        n_layers=layers,
        qk_norm=True,
        cap_feat_dim=CAP,
        axes_lens=(300, 512, 512),
        device=device,
        dtype=torch.float32,
        operations=comfy.ops.disable_weight_init,
        **cfg,
    )
    if device != "meta":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # disable_weight_init leaves weights uninitialised
            for name, p in m.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0) if "norm" in name else p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def _call(m, x, t, ctx):
    return m(x, t, ctx, ctx.shape[1], transformer_options={})


# -- MACs ------------------------------------------------------------------------------------------------------------


def _count(m, run):
    """MACs per unit from hooks: every Linear by module name, the attention products at ComfyUI's attention call."""
    import comfy.ldm.lumina.model as lumina

    def unit_of(name):
        mm = re.match(r"layers\.(\d+)\.(attention|feed_forward)(\.|$)", name)
        return (mm.group(1), {"attention": "attn", "feed_forward": "ffn"}[mm.group(2)]) if mm else "fixed"

    linear: dict = {}
    attn: dict = {}
    current: list = []
    hooks = []
    for name, mod in m.named_modules():
        key = unit_of(name)
        if isinstance(mod, torch.nn.Linear):

            def hook(mo, inp, out, key=key):
                linear[key] = linear.get(key, 0) + inp[0].numel() * mo.out_features

            hooks.append(mod.register_forward_hook(hook))
        if isinstance(mod, lumina.JointAttention):
            hooks.append(mod.register_forward_pre_hook(lambda mo, a, key=key: current.append(key)))
            hooks.append(mod.register_forward_hook(lambda mo, a, o: [current.pop(), None][1]))
    inner = lumina.optimized_attention_masked

    def counting(q, k, v, heads, *a, **kw):  # skip_reshape: (B, heads, L, head_dim)
        key = current[-1]
        attn[key] = attn.get(key, 0) + 2 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
        return inner(q, k, v, heads, *a, **kw)

    lumina.optimized_attention_masked = counting
    try:
        with torch.no_grad():
            run()
    finally:
        lumina.optimized_attention_masked = inner
        for h in hooks:
            h.remove()
    return linear, attn


@pytest.mark.parametrize("cfg", [LUMINA, ZIMAGE], ids=["lumina2", "zimage"])
def test_macs_formula_matches_hooked_comfy_modules(comfy, cfg):
    adapters, _, _ = comfy
    m = _nextdit(cfg, layers=3)
    ad = adapters.adapter_of(m)
    assert ad.family == "lumina2" and ad.layout.describe() == make_layout("lumina2", 3).describe()
    arch = ad.arch("test")
    costs = importlib.import_module("comfyui_ecad_bench.ecad_core.costs")  # the adapter's Arch is the pack's
    h, w, batch, tt = 64, 96, 2, 7  # latent 8x12 -> 4x6 = 24 image tokens (Z-Image pads both to 32)
    x = torch.randn(batch, 16, h // 8, w // 8)
    ctx = torch.randn(batch, tt, CAP)
    linear, attn = _count(m, lambda: _call(m, x, torch.full((batch,), 0.5), ctx))
    ecad = costs.step_costs(arch, h, w, batch=batch, text_tokens=tt, mode="ecad")
    full = costs.step_costs(arch, h, w, batch=batch, text_tokens=tt, mode="full")
    units = ad.layout.units()
    assert set(linear) == set(units) | {"fixed"}
    assert [linear[u] for u in units] == ecad.unit.tolist()
    assert linear["fixed"] == ecad.fixed
    assert [linear[u] + attn.get(u, 0) for u in units] == full.unit.tolist()
    assert full.fixed == ecad.fixed + attn["fixed"]  # the refiners' attention runs every step


def test_variant_numbers_are_the_real_models():
    # Z-Image: 30 layers of 3840 (30 heads), SwiGLU 10240; Lumina-Image 2.0: 26 layers of 2304 (24 heads, 8 kv)
    z = step_costs("z-image", 1024, 1024, batch=1)
    lu = step_costs("lumina-image-2", 1024, 1024, batch=1)
    assert z.arch.depth == 30 and z.arch.extra["ffn_dim"] == 10240 and z.arch.extra["mod_dim"] == 256
    assert lu.arch.depth == 26 and lu.arch.extra["ffn_dim"] == 9216 and lu.arch.extra["kv_heads"] == 8
    # the main layers dominate: a cached unit must be worth something
    assert z.unit.sum() > 10 * z.fixed and lu.unit.sum() > 5 * lu.fixed


# -- model files -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cfg", "word"), [(LUMINA, "lumina2"), (ZIMAGE, "z-image")], ids=["lumina2", "zimage"])
def test_model_file_detection(comfy, cfg, word):
    keys = list(_nextdit(cfg, layers=5, device="meta").state_dict())
    for prefix in ("", "model.diffusion_model."):
        found = layout_of_keys([prefix + k for k in keys])
        assert found == (make_layout("lumina2", 5), word)


# -- the adapter -------------------------------------------------------------------------------------------------------


def _loop(m, x0, ctx):
    x = x0.clone()
    ts = torch.linspace(1.0, 0.1, STEPS)
    for i in range(STEPS):
        yield i, x
        x = x - 0.1 * _call(m, x, ts[i].expand(x.shape[0]), ctx)
    yield STEPS, x


def _plain(m, x0, ctx):
    with torch.no_grad():
        return list(_loop(m, x0, ctx))[-1][1]


def _pack(comfy, m, x0, ctx, sched):
    adapters, engine_mod, _ = comfy
    eng = engine_mod.CacheEngine(sched)
    run = _Run(eng)
    mp = bench_comfy.Patcher(m, {})
    adapters.adapter_of(m).install(mp, run)
    try:
        with torch.no_grad():
            for i, x in _loop(m, x0, ctx):
                if i == 0:
                    eng.begin_run(STEPS)
                if i == STEPS:
                    out = x
                    break
                eng.set_position(i, ("cond", "uncond"))
                if i == 1:
                    for check in run.first_eval_checks:
                        check()
        stats = eng.end_run()
    finally:
        mp.unpatch()
    return out, stats, run


@pytest.mark.parametrize("cfg", [LUMINA, ZIMAGE], ids=["lumina2", "zimage"])
def test_module_caching_is_ecad_semantics_bit_for_bit(comfy, cfg):
    m = _nextdit(cfg, layers=3, seed=1)
    g = torch.Generator().manual_seed(2)
    x0, ctx = torch.randn(2, 16, 8, 10, generator=g), torch.randn(2, 6, CAP, generator=g)
    _, _, sm = comfy
    layout = sm.make_layout("lumina2", 3)
    plain = _plain(m, x0, ctx)

    x, stats, run = _pack(comfy, m, x0, ctx, sm.Schedule.full(layout, STEPS))
    assert torch.equal(x, plain)  # all-recompute: ComfyUI's own output
    assert stats.total_computed == STEPS * layout.n_units and stats.total_reused == 0
    assert "module caching" in run.hook_path.describe()

    bits = np.random.default_rng(0).random((STEPS, layout.n_units)) < 0.4
    sched = sm.Schedule(layout, bits, name="mixed")
    x, stats, _ = _pack(comfy, m, x0, ctx, sched)
    units = [blk.get_submodule(a) for blk in m.layers for a in ("attention", "feed_forward")]
    with torch.no_grad(), CeilingCache(units, sched.effective_bits()) as c:
        ref = None
        for i, xi in _loop(m, x0, ctx):
            c.step = min(i, STEPS - 1)
            ref = xi
    assert torch.equal(x, ref)  # the reused units' raw outputs, gates and residuals fresh
    assert stats.total_reused == int((~sched.effective_bits()).sum()) > 0 and int(stats.fallback.sum()) == 0
    assert not torch.equal(x, plain)


def test_layers_that_stop_calling_their_modules_run_uncached(comfy, monkeypatch, caplog):
    # a future block computing its feed-forward without calling the module: the model runs uncached, one warning
    m = _nextdit(LUMINA, layers=2, seed=3)
    cls = type(m.layers[0])
    original = cls.forward

    def forward(self, *a, **k):
        ff = self.feed_forward
        self.__dict__["feed_forward"] = lambda v: type(ff).forward(ff, v)
        try:
            return original(self, *a, **k)
        finally:
            del self.__dict__["feed_forward"]

    monkeypatch.setattr(cls, "forward", forward)
    g = torch.Generator().manual_seed(4)
    x0, ctx = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 5, CAP, generator=g)
    plain = _plain(m, x0, ctx)
    sm = comfy[2]
    layout = sm.make_layout("lumina2", 2)
    with caplog.at_level(logging.WARNING, logger="ecad"):
        x, _, run = _pack(comfy, m, x0, ctx, sm.Schedule(layout, np.zeros((STEPS, layout.n_units), bool)))
    assert torch.equal(x, plain) and not run.engine.enabled
    assert "Z-Image/Lumina2 on ComfyUI" in caplog.text and "2 of 4 units ran" in caplog.text


def test_search_seeds_use_the_family_roles():
    space = GenomeSpace(make_layout("lumina2", 4), 10)
    names = {s.name for s in heuristic_seeds(space)}
    assert {"cache-attn-every-2", "cache-ffn-every-2", "recompute-all-every-2"} <= names
    assert not any(n.startswith("tgate-like") for n in names)  # no cross-attention to gate
