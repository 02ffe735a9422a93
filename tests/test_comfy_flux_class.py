"""FLUX.2 and Chroma on ComfyUI's own classes, in-process (issue #18): ComfyUI's ``Flux`` built as FLUX.2 (shared
modulations, gated MLPs, no biases; Klein-sized, as ComfyUI builds it from a checkpoint) and ComfyUI's ``Chroma``
(distilled guidance layer) get their own adapters and layouts, never FLUX.1's; all-recompute reproduces ComfyUI's
output bit for bit, a mixed schedule equals an independent module-level cache and reuses exactly the scheduled units,
on the re-statement and on the module-level fallback; the analytic MACs equal hook-counted MACs of the modules."""

from __future__ import annotations

import dataclasses
import importlib
import re

import numpy as np
import pytest
import torch
from test_comfy_upstream_changes import FluxModuleCache, _pack_loop, _switch_off

from bench import bench_comfy

STEPS = 3  # as test_comfy_upstream_changes' _pack_loop drives it
ND, NS = 2, 3
HIDDEN, HEADS = 64, 2


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    bench_comfy.import_comfy("cpu")
    return bench_comfy.pack_modules()


@pytest.fixture(autouse=True)
def _fresh_checks(comfy):
    importlib.import_module("comfyui_ecad_bench.ecad_core.hooks").forget_verified()


def _init(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("scale"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


class _Den:
    """A tiny Euler-like loop over a ComfyUI diffusion model (what bench.models.Denoiser does)."""

    def __init__(self, model, x0, call):
        self.model, self.x0, self.call, self.steps = model, x0, call, STEPS
        self.transformer_options: dict = {"patches_replace": {}}

    def loop(self, pre=None):
        x = self.x0.clone()
        for i in range(self.steps):
            if pre is not None:
                pre(i)
            x = x - 0.05 * self.call(x, i)
        return x


def flux_model(flux2: bool, guidance: bool = False, seed: int = 0):
    """ComfyUI's Flux as its detection builds FLUX.2 (``flux2``) or FLUX.1, Klein-sized: 2 double + 3 single."""
    import comfy.ldm.flux.model as flux_model
    import comfy.ops

    fields = {f.name for f in dataclasses.fields(flux_model.FluxParams)}
    if flux2:
        kw = dict(
            axes_dim=[8, 8, 8, 8],
            mlp_ratio=3.0,
            theta=2000,
            out_channels=16,
            in_channels=16,
            patch_size=1,
            global_modulation=True,
            mlp_silu_act=True,
            qkv_bias=False,
            ops_bias=False,
            vec_in_dim=None,
        )
        kw.update(txt_ids_dims=[3]) if "txt_ids_dims" in fields else None
    else:
        kw = dict(
            axes_dim=[8, 12, 12], mlp_ratio=4.0, theta=10000, out_channels=4, in_channels=4, patch_size=2, qkv_bias=True
        )
        kw.update(vec_in_dim=16)
        kw.update(txt_ids_dims=[]) if "txt_ids_dims" in fields else None
    m = flux_model.Flux(
        context_in_dim=24,
        hidden_size=HIDDEN,
        num_heads=HEADS,
        depth=ND,
        depth_single_blocks=NS,
        guidance_embed=guidance,
        operations=comfy.ops.disable_weight_init,
        **kw,
    )
    return _init(m, seed)


def chroma_model(seed: int = 0):
    import comfy.ldm.chroma.model as chroma
    import comfy.ops

    fields = {f.name for f in dataclasses.fields(chroma.ChromaParams)}
    extra = {k: v for k, v in (("txt_ids_dims", []), ("vec_in_dim", None)) if k in fields}  # ComfyUI 0.33
    m = chroma.Chroma(
        **extra,
        in_channels=64,
        out_channels=64,
        context_in_dim=24,
        hidden_size=HIDDEN,
        mlp_ratio=4.0,
        num_heads=HEADS,
        depth=ND,
        depth_single_blocks=NS,
        axes_dim=[8, 12, 12],
        theta=10000,
        patch_size=2,
        qkv_bias=True,
        in_dim=64,
        out_dim=HIDDEN,
        hidden_dim=48,
        n_layers=2,
        operations=comfy.ops.disable_weight_init,
    )
    return _init(m, seed)


T = 7  # text tokens


def _den(kind: str, seed: int = 0) -> _Den:
    g = torch.Generator().manual_seed(seed + 1)
    ctx = torch.randn(1, T, 24, generator=g)
    sig = torch.linspace(1.0, 1.0 / STEPS, STEPS)
    if kind == "flux2":
        m = flux_model(True, seed=seed)
        x0 = torch.randn(1, 16, 4, 6, generator=g)  # 64 x 96 px: FLUX.2's VAE is 16x, no packing
        call_kw: dict = {}
    elif kind == "flux1":
        m = flux_model(False, seed=seed)
        x0 = torch.randn(1, 4, 8, 12, generator=g)
        call_kw = {"y": torch.randn(1, 16, generator=g)}
    else:
        m = chroma_model(seed)
        x0 = torch.randn(1, 16, 8, 12, generator=g)
        call_kw = {"guidance": torch.zeros(1)}
    den = _Den(m, x0, None)

    def call(x, i):
        with torch.no_grad():
            return m(x, sig[i].expand(1), ctx, transformer_options=dict(den.transformer_options), **call_kw)

    den.call = call
    return den


@pytest.fixture(scope="module", params=["flux2", "chroma"])
def den(request, comfy):
    return request.param, _den(request.param)


def test_each_flux_class_model_gets_its_own_adapter_and_layout(comfy):
    adapters = comfy[0]
    a2 = adapters.adapter_of(flux_model(True))
    a1 = adapters.adapter_of(flux_model(False))
    ac = adapters.adapter_of(chroma_model())
    assert (type(a2).__name__, a2.layout.family, a2.layout.describe()) == (
        "Flux2Comfy",
        "flux2",
        make_layout_describe("flux2"),
    )
    assert (type(a1).__name__, a1.layout.family) == ("FluxComfy", "flux")
    assert (type(ac).__name__, ac.layout.family) == ("ChromaComfy", "chroma")
    assert a2.arch_hint == "flux2-klein-4b" and a1.arch_hint == "flux-schnell" and ac.arch_hint == "chroma"
    assert adapters.adapter_of(flux_model(True, guidance=True)).arch_hint == "flux2-dev"
    assert a2.kind == "ComfyUI FLUX.2 (flux2-klein-4b, 2 double + 3 single blocks)"


def make_layout_describe(family):
    from ecad_core import make_layout

    return make_layout(family, ND, NS).describe()


def _mixed(comfy, den, seed=0):
    schedule_mod = comfy[2]
    layout = comfy[0].adapter_of(den.model).layout
    bits = np.random.default_rng(seed).random((STEPS, layout.n_units)) < 0.4
    bits[:, 0] = False
    s0 = 3 * ND  # single blocks: attention and MLP input computed together (FluxModuleCache's rule)
    bits[:, s0 + 1 :: 3] = bits[:, s0::3]
    return schedule_mod.Schedule(layout, bits, name=f"random-{seed}")


@pytest.mark.parametrize("path", ["restated", "module fallback"])
def test_all_recompute_is_exact_and_a_mixed_schedule_reuses_what_it_says(comfy, den, path, monkeypatch):
    kind, d = den
    if path == "module fallback":
        _switch_off(monkeypatch, comfy)
    plain = d.loop()
    layout = comfy[0].adapter_of(d.model).layout
    full, stats, run = _pack_loop(comfy, d, comfy[2].Schedule.full(layout, STEPS))
    assert torch.equal(full, plain) and stats.total_reused == 0
    sched = _mixed(comfy, d)
    bits = sched.effective_bits()
    ref = FluxModuleCache(d.model, bits).loop(d)
    out, stats, run = _pack_loop(comfy, d, sched)
    assert (run.hook_path.off is None) == (path == "restated"), run.hook_path.describe()
    assert torch.equal(out, ref), kind
    assert stats.total_reused == int((~bits).sum()) > 0
    diff = (out - plain).abs().max().item()
    assert 0 < diff < 0.5 * plain.abs().max().item()  # a cached image: close to, not equal to, the uncached one


def _unit_of(name: str, nd: int):
    m = re.match(r"double_blocks\.(\d+)\.(img_attn|txt_attn|img_mlp|txt_mlp)(\.|$)", name)
    if m:
        comp = {"img_attn": "full_attn", "txt_attn": "full_attn", "img_mlp": "full_ff", "txt_mlp": "full_ff_context"}
        return m.group(1), comp[m.group(2)]
    m = re.match(r"single_blocks\.(\d+)\.(linear1|linear2)$", name)
    if m:
        return f"single_{m.group(1)}", m.group(2)
    return "fixed"


def _hook_counted(model, run):
    """MACs per unit from ComfyUI's modules: every Linear (``linear1``'s q/k/v rows to the attention, the rest to
    the MLP input) and the attention products of ComfyUI's FLUX attention."""
    import comfy.ldm.flux.layers as layers

    linear: dict = {}
    attn: dict = {}
    hooks = []
    current: list = []

    def add(key, n):
        linear[key] = linear.get(key, 0) + n

    for name, mod in model.named_modules():
        key = _unit_of(name, ND)
        if isinstance(key, tuple) and key[1] in ("linear1", "linear2"):
            blk, which = key

            def hook(m, inp, out, blk=blk, which=which):
                tokens = inp[0].numel() // m.in_features
                if which == "linear1":
                    h3 = 3 * HIDDEN
                    add((blk, "single_attn"), tokens * m.in_features * h3)
                    add((blk, "single_proj_mlp"), tokens * m.in_features * (m.out_features - h3))
                else:
                    add((blk, "single_proj_out"), tokens * m.in_features * m.out_features)

            hooks.append(mod.register_forward_hook(hook))
        elif isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(lambda m, i, o, key=key: add(key, i[0].numel() * m.out_features)))
        if re.fullmatch(r"(double|single)_blocks\.\d+", name):
            u = _unit_of(name + ".img_attn", ND) if name.startswith("double") else (f"single_{name.split('.')[1]}",)
            comp = "full_attn" if name.startswith("double") else "single_attn"
            hooks.append(mod.register_forward_pre_hook(lambda m, a, u=u, comp=comp: current.append((u[0], comp))))
            hooks.append(mod.register_forward_hook(lambda m, a, o: [current.pop(), None][1]))
    own = layers.attention

    def counting(q, k, v, *a, **kw):
        u = current[-1]
        attn[u] = attn.get(u, 0) + 2 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
        return own(q, k, v, *a, **kw)

    layers.attention = counting
    try:
        with torch.no_grad():
            run()
    finally:
        layers.attention = own
        for h in hooks:
            h.remove()
    return linear, attn


@pytest.mark.parametrize("kind", ["flux2", "flux2-guidance", "chroma"])
def test_analytic_macs_equal_hook_counted_macs(comfy, kind):
    if kind == "chroma":
        m, x, kw = chroma_model(), torch.randn(1, 16, 8, 12), {"guidance": torch.zeros(1)}
    else:
        m, x, kw = flux_model(True, guidance=kind.endswith("guidance")), torch.randn(1, 16, 4, 6), {}
        kw.update(guidance=torch.full((1,), 3.5)) if kind.endswith("guidance") else None
    adapter = comfy[0].adapter_of(m)
    arch = adapter.arch("test")
    step_costs = importlib.import_module("comfyui_ecad_bench.ecad_core.costs").step_costs  # the adapter's Arch
    ctx = torch.randn(1, T, 24)
    linear, attn = _hook_counted(m, lambda: m(x, torch.full((1,), 0.5), ctx, **kw))
    ecad = step_costs(arch, 64, 96, batch=1, text_tokens=T, mode="ecad")
    full = step_costs(arch, 64, 96, batch=1, text_tokens=T, mode="full")
    units = adapter.layout.units()
    assert set(linear) == set(units) | {"fixed"}
    assert [linear[u] for u in units] == ecad.unit.tolist()
    assert linear["fixed"] == ecad.fixed
    assert [linear[u] + attn.get(u, 0) for u in units] == full.unit.tolist()


def test_header_detection_knows_each_flux_class_family(comfy):
    # the preset filter reads the safetensors header: ComfyUI's own key names of each model
    from ecad_core.schedule.model_files import layout_of_keys

    for m, family in ((flux_model(True), "flux2"), (flux_model(False), "flux"), (chroma_model(), "chroma")):
        layout, word = layout_of_keys([f"model.diffusion_model.{k}" for k in m.state_dict()])
        assert (layout.family, layout.describe(), word) == (family, make_layout_describe(family), family)


def test_diffusers_chroma_has_its_family_and_flux2_is_refused():
    from diffusers import ChromaTransformer2DModel, Flux2Transformer2DModel

    from ecad_core.costs import Arch
    from ecad_core.diffusers.adapters import find_diffusers_units
    from ecad_core.errors import ModelMismatchError
    from ecad_core.schedule.model_files import layout_of_keys

    c = ChromaTransformer2DModel(
        num_layers=ND,
        num_single_layers=NS,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    assert find_diffusers_units(c).layout.describe() == make_layout_describe("chroma")
    assert layout_of_keys(list(c.state_dict()))[0].family == "chroma"
    a = Arch.from_diffusers_config(c.config)
    assert (a.family, a.hidden, a.depth, a.single_depth, a.extra["mod_vectors"]) == (
        "chroma",
        32,
        ND,
        NS,
        3 * NS + 12 * ND + 2,
    )
    f2 = Flux2Transformer2DModel(
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 4, 4, 4),
        in_channels=16,
    )
    assert layout_of_keys(list(f2.state_dict()))[0].family == "flux2"
    assert Arch.from_diffusers_config(f2.config).family == "flux2"
    with pytest.raises(ModelMismatchError, match="Flux2Transformer2DModel"):
        find_diffusers_units(f2)


@pytest.mark.parametrize("family", ["flux2", "chroma"])
def test_heuristic_seeds_use_the_family_roles(family):
    from ecad_core import make_layout
    from ecad_core.search.problem import GenomeSpace
    from ecad_core.search.sampling import heuristic_seeds

    seeds = {s.name: s for s in heuristic_seeds(GenomeSpace(make_layout(family, ND, NS), 10))}
    lay = next(iter(seeds.values())).layout
    comps = [u[1] for u in lay.units()]
    att = [i for i, c in enumerate(comps) if c in ("full_attn", "single_attn")]
    others = [i for i, c in enumerate(comps) if c not in ("full_attn", "single_attn")]
    bits = seeds["cache-attention-every-2"].effective_bits()  # both streams' attention, recomputed together
    assert not bits[1::2, att].any() and bits[::2, att].all() and bits[:, others].all()
    tg = next(s for n, s in seeds.items() if n.startswith("tgate"))
    bits = tg.effective_bits()
    ctx = [i for i, c in enumerate(comps) if c == "full_ff_context"]
    img = [i for i, c in enumerate(comps) if c == "full_ff"]
    assert not bits[-1, ctx].any() and bits[:, img].all()  # the text stream is gated, the image MLP untouched


@pytest.mark.parametrize("kind", ["flux2", "chroma"])
def test_a_flux1_schedule_is_refused_clearly(comfy, kind):
    # the same layout shape (2 double + 3 single blocks, FLUX's component names) but FLUX.1's family: refused
    S = comfy[2]
    model_patcher = importlib.import_module("comfy.model_patcher")
    patching = importlib.import_module("comfyui_ecad_bench.nodes.patching")
    base = torch.nn.Module()
    base.diffusion_model = flux_model(True) if kind == "flux2" else chroma_model()
    mp = model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))
    flux1 = S.Schedule.full(S.make_layout("flux", ND, NS), STEPS, name="flux1-full", model="flux-dev")
    with pytest.raises(Exception, match="flux1-full") as e:
        patching.patch_model(mp, flux1)
    assert ("FLUX.2" if kind == "flux2" else "Chroma") in str(e.value), str(e.value)


def test_evolve_cost_model_is_the_family_macs(comfy):
    # what the Evolve and Evaluate nodes cost a schedule with (adapter.compute_cost): analytic MACs of the
    # loaded model; FLUX.2's prompt counted at the 512 tokens ComfyUI pads it to
    for m, arch, tokens in ((flux_model(True), "flux2-klein-4b", 512), (chroma_model(), "chroma", T)):
        c = comfy[0].adapter_of(m).compute_cost(4, 64, 96, T)
        assert (c.source, c.info["arch"], c.info["text_tokens"]) == ("macs", arch, tokens), c.info
        assert c.unit.shape == (4, 3 * (ND + NS)) and (c.unit > 0).all()


def test_evolve_sizes_flux2_latents_at_one_sixteenth(comfy):
    # Evolve / Evaluate make their latents at latent_ratio: 1/16 for FLUX.2 as EmptyFlux2LatentImage does (ComfyUI
    # 0.3.75's FLUX.2 latent format omits the ratio; 1/8 would search at twice the size the cost model assumes)
    model_patcher = importlib.import_module("comfy.model_patcher")
    supported_models = importlib.import_module("comfy.supported_models")
    sampling = importlib.import_module("comfyui_ecad_bench.nodes.sampling")
    m = flux_model(True)
    unet = {"image_model": "flux2", **{f.name: getattr(m.params, f.name) for f in dataclasses.fields(m.params)}}
    bm = supported_models.Flux2(unet).get_model({}, device="cpu")
    mp = model_patcher.ModelPatcher(bm, torch.device("cpu"), torch.device("cpu"))
    assert sampling.latent_ratio(mp) == 16


# -- the unit probe (issue #19): the units ComfyUI's blocks compute inside their own forward are stored by the
# adapters, not run through the engine's unit calls; the probe must see every one, and its run must give the
# uncached output bit for bit
@pytest.mark.parametrize("path", ["restated", "module fallback"])
@pytest.mark.parametrize("kind", ["flux1", "flux2", "chroma"])
def test_probe_sees_every_unit_of_comfyuis_flux_blocks(comfy, kind, path, monkeypatch):
    if path == "module fallback":
        _switch_off(monkeypatch, comfy)
    probe_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.engine.probe")
    engine_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.engine")
    d = _den(kind)
    plain = d.loop()
    layout = comfy[0].adapter_of(d.model).layout
    probe = probe_mod.UnitChangeProbe(layout.n_units, STEPS, max_coords=10**9)
    with engine_mod.unit_timing(probe):
        out, stats, _ = _pack_loop(comfy, d, comfy[2].Schedule.full(layout, STEPS))
    assert torch.equal(out, plain) and stats.total_reused == 0
    assert probe.units_seen() == list(range(layout.n_units)), (kind, path)
    E = probe.changes()
    low = np.tril_indices(STEPS, -1)
    assert all((E[u][low] > 0).all() for u in range(layout.n_units)), (kind, path)
    # without the probe, all recompute keeps nothing (the probe's keeping is its own run's)
    _, stats, run = _pack_loop(comfy, d, comfy[2].Schedule.full(layout, STEPS))
    assert run.engine.cache_bytes() == 0
