"""Denoising-loop wall time on the ComfyUI path: ComfyUI's own PixArt and FLUX, no cache / this pack / the ceiling.

The model is ``comfy.ldm.pixart.pixartms.PixArtMS`` or ``comfy.ldm.flux.model.Flux``
(FLUX.1-dev) built in-process from the ComfyUI checkout (``.cache/ComfyUI``) with
``comfy.ops.disable_weight_init`` (what ComfyUI picks for weights computed in
their own dtype) and random weights; it is called as ``BaseModel._apply_model``
calls it (all inputs on the device). The pack's hooks are installed by the
adapter's own ``install`` (object patches applied as ModelPatcher applies them,
FLUX block hooks passed in ``transformer_options["patches_replace"]``), driven
per step as the APPLY_MODEL wrapper drives them. ``--profile`` also writes
torch.profiler tables of one no-cache loop here and on diffusers' PixArt at the
same size. ``--graphs`` (PixArt) adds the Apply node's CUDA-graph mode (``nodes/comfy_graphs``)
with no cache and per preset, and per preset the ceiling in CUDA graphs
(``bench.ceiling.CeilingGraphs``, ``graphs ceiling <preset>``): the graph rows' reference.

    python -m bench.bench_comfy --res 1024 --presets pixart-alpha-256-fast,... --out r.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

from . import bench_diffusers, models
from .ceiling import CeilingCache, ComfyFluxCeiling, ComfyPixArtCeiling
from .common import REPO, SCHEDULES, hardware, resolve_dtype, write_json
from .runner import Variant, run_variants

# the ComfyUI tree (ECAD_COMFY_DIR, as the test harness reads it) and, for a tree with its own venv
# (ECAD_COMFY_PYTHON: scripts/setup_env.sh's ComfyUI 0.33), that venv's packages after this one's (what the
# newer tree needs beyond torch: comfy_kitchen, comfy_aimdo)
COMFY_DIR = Path(os.environ.get("ECAD_COMFY_DIR") or REPO / ".cache" / "ComfyUI")
COMFY_PYTHON = os.environ.get("ECAD_COMFY_PYTHON") or None


def import_comfy(device) -> None:
    """Put ComfyUI on sys.path (CPU mode when the device is the CPU) and import what the bench uses."""
    if not (COMFY_DIR / "comfy").is_dir():
        raise SystemExit(f"bench_comfy: no ComfyUI at {COMFY_DIR} (bash scripts/setup_env.sh installs it)")
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
        if COMFY_PYTHON:
            venv = Path(COMFY_PYTHON).absolute().parent.parent  # not resolve(): a venv python links outside
            sys.path.extend(str(p) for p in sorted(venv.glob("lib/python3*/site-packages")))
    import comfy.cli_args

    if torch.device(device).type == "cpu":
        comfy.cli_args.args.cpu = True
    import comfy.ldm.pixart.pixartms
    import comfy.ops


def pack_modules():
    """This pack's ``nodes.adapters`` (with its ``pixart``, ``flux`` and ``base`` modules), ``ecad_core.engine`` and
    ``ecad_core.schedule`` as ComfyUI loads them (one package)."""
    name = "comfyui_ecad_bench"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(REPO)]
        sys.modules[name] = pkg
        nodes = types.ModuleType(f"{name}.nodes")  # not nodes/__init__: the adapters need no node classes
        nodes.__path__ = [str(REPO / "nodes")]
        sys.modules[f"{name}.nodes"] = nodes
    adapters = importlib.import_module(f"{name}.nodes.adapters")
    for sub in ("base", "pixart", "flux", "dit_blocks"):
        importlib.import_module(f"{name}.nodes.adapters.{sub}")
    engine = importlib.import_module(f"{name}.ecad_core.engine")
    schedule = importlib.import_module(f"{name}.ecad_core.schedule")
    return adapters, engine, schedule


def graphs_module():
    """This pack's ``nodes.comfy_graphs`` (after ``pack_modules``)."""
    return importlib.import_module("comfyui_ecad_bench.nodes.comfy_graphs")


def comfy_pixart(variant: str, res: int, *, tiny: bool, device, dtype, steps: int = 20, seed: int = 0):
    import comfy.ops
    from comfy.ldm.pixart.pixartms import PixArtMS

    c = models.PIXART_TINY if tiny else models.PIXART_FULL
    # micro-conditioning embeds size and aspect ratio in hidden/3 channels each: the width must divide by 3
    hidden = c["heads"] * (24 if tiny else c["head_dim"])
    L = models.PIXART_TEXT_TOKENS[variant]
    torch.manual_seed(seed)
    m = PixArtMS(
        input_size=res // 8,
        patch_size=2,
        in_channels=4,
        hidden_size=hidden,
        depth=28,
        num_heads=c["heads"],
        caption_channels=c["caption_channels"],
        model_max_length=L,
        micro_condition=variant == "alpha",
        pred_sigma=True,
        dtype=dtype,
        device=device,
        operations=comfy.ops.disable_weight_init,
    ).eval()
    with torch.no_grad():  # disable_weight_init leaves weights uninitialised
        for p in m.parameters():  # biases too: a zero bias hides how a fused-bias matmul rounds
            p.normal_(0, 0.02)
    # A few parameters (the blocks' scale_shift_table) are created without the device/dtype arguments:
    # fp32 on the CPU. ComfyUI's ModelPatcher moves the whole model to the GPU on load (dtypes kept), so
    # do the same; left on the CPU they would cost a host-to-device copy in every block call.
    m.to(device)
    b = 2
    g = torch.Generator(device="cpu").manual_seed(seed)
    x0 = torch.randn(b, 4, res // 8, res // 8, generator=g).to(device, dtype)
    context = torch.randn(b, L, c["caption_channels"], generator=g).to(device, dtype)
    c_size = torch.tensor([[res, res]] * b, dtype=dtype, device=device)
    c_ar = torch.tensor([[1.0]] * b, dtype=dtype, device=device)
    ts = torch.linspace(999, 1, steps).to(device, dtype)

    def call(x, i):
        kw = {"c_size": c_size, "c_ar": c_ar} if variant == "alpha" else {}
        return m(x, ts[i].expand(b), context=context, transformer_options={}, **kw)

    units = [getattr(blk, attr) for blk in m.blocks for attr in ("attn", "cross_attn", "mlp")]
    den = models.Denoiser(
        f"ComfyUI PixArt-{variant} {res}²",
        m,
        x0,
        call,
        steps,
        units,
        {"tokens": (res // 16) ** 2, "batch": b, "text_tokens": L},
    )
    den.inputs = {"context": context, "timesteps": ts}
    return den


def comfy_flux(res: int, *, tiny: bool, device, dtype, steps: int = 20, seed: int = 0):
    """ComfyUI's FLUX.1-dev (19 double + 38 single blocks, guidance embedding) at ``res``², batch 1."""
    import comfy.ldm.flux.model as flux_model
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    c = models.FLUX_TINY if tiny else models.FLUX_FULL
    torch.manual_seed(seed)
    # ComfyUI 0.33 added a required FluxParams field (FLUX.1 has no text-position dims)
    fields = {f.name for f in dataclasses.fields(flux_model.FluxParams)}
    extra = {"txt_ids_dims": []} if "txt_ids_dims" in fields else {}
    m = Flux(
        **extra,
        in_channels=16,
        out_channels=16,
        vec_in_dim=c["pooled_dim"],
        context_in_dim=c["joint_dim"],
        hidden_size=c["heads"] * c["head_dim"],
        mlp_ratio=4.0,
        num_heads=c["heads"],
        depth=19,
        depth_single_blocks=38,
        axes_dim=list(c["axes"]),
        theta=10000,
        patch_size=2,
        qkv_bias=True,
        guidance_embed=True,
        dtype=dtype,
        device=device,
        operations=comfy.ops.disable_weight_init,
    ).eval()
    with torch.no_grad():  # uninitialised weights; norms' scales 1 so activations stay finite over 57 blocks
        for name, p in m.named_parameters():  # biases random: a zero bias hides how a fused-bias matmul rounds
            p.fill_(1.0) if name.endswith(("scale", "norm.weight")) else p.normal_(0, 0.02)
    m.to(device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    L = c["text_tokens"]
    x0 = torch.randn(1, 16, res // 8, res // 8, generator=g).to(device, dtype)
    context = torch.randn(1, L, c["joint_dim"], generator=g).to(device, dtype)
    pooled = torch.randn(1, c["pooled_dim"], generator=g).to(device, dtype)
    guidance = torch.full((1,), 3.5, device=device, dtype=torch.float32)
    sigmas = torch.linspace(1.0, 1.0 / steps, steps).to(device)  # flow matching: the model sees t = sigma
    opts: dict = {"patches_replace": {}}  # the calls' transformer_options (the pack's and tests' patches go here)
    kwargs: dict = {}  # more keyword arguments of the calls (tests: ref_latents)

    def call(x, i):
        return m(x, sigmas[i].expand(1), context, y=pooled, guidance=guidance, transformer_options=dict(opts), **kwargs)

    den = models.Denoiser(
        f"ComfyUI FLUX.1-dev {res}²", m, x0, call, steps, [], {"tokens": (res // 16) ** 2, "batch": 1, "text_tokens": L}
    )
    den.transformer_options, den.call_kwargs = opts, kwargs
    return den


class Patcher:
    """What the pack's installers need from a ModelPatcher, applied at once (as ComfyUI does on load)."""

    def __init__(self, dm, options: dict):
        self.model = types.SimpleNamespace(diffusion_model=dm)
        self.dm, self.options, self.patched = dm, options, []
        self.object_patches: dict = {}

    def add_object_patch(self, name: str, obj) -> None:
        path, _, attr = name.removeprefix("diffusion_model").lstrip(".").rpartition(".")
        mod = self.dm.get_submodule(path)
        setattr(mod, attr, obj)
        self.object_patches[name] = obj
        self.patched.append((mod, attr))

    def set_model_patch_replace(self, patch, name: str, block_name: str, number: int) -> None:
        self.options.setdefault("patches_replace", {}).setdefault(name, {})[(block_name, number)] = patch

    def unpatch(self) -> None:
        for mod, attr in self.patched:
            delattr(mod, attr)
        self.patched = []
        self.object_patches = {}
        self.options["patches_replace"] = {}


def variants(
    den,
    presets,
    adapters,
    engine_mod,
    schedule_mod,
    recompute=True,
    graphs=False,
    graphs_mod=None,
    schedules=(),
    any_module=True,
):
    """No cache, all-recompute, the pack and the ceiling per preset (names), the pack per extra ``schedules``
    (Schedule objects, no ceiling), and the graph variants: no cache, and per preset the pack and the ceiling
    in CUDA graphs (as ``bench_diffusers --graphs``; its variant, on the preset remapped here)."""

    class _Run:  # what the adapters' hooks read: the engine of the patched model, FLUX's capture slot
        def __init__(self, engine):
            self.engine = engine
            self.capture = None
            self.first_eval_checks, self.pre_run_checks = [], []

    flux = hasattr(den.model, "double_blocks")
    adapter = adapters.adapter_of(den.model)
    layout = adapter.layout
    options = getattr(den, "transformer_options", {})

    def pack(sched, graphs=False):
        def setup():
            eng = engine_mod.CacheEngine(sched)
            run = _Run(eng)
            mp = Patcher(den.model, options)
            adapter.install(mp, run)
            if graphs:  # as the Apply node's cuda_graphs option installs it
                gm = graphs_mod.install_graphs(mp, run, adapter)

            def pre(i):
                if i == 0:
                    eng.begin_run(den.steps)
                eng.set_position(i, ("cond", "uncond"))

            def teardown():
                eng.end_run()
                mp.unpatch()
                if graphs and gm is not None:
                    gm.detach()

            def stats():
                st = (eng.last_stats or eng.stats).as_dict()
                if graphs:
                    st["cuda_graphs"] = gm.status() if gm is not None else None
                return st

            return pre, teardown, stats

        return setup

    def ceiling(bits, any_module=False):
        def setup():
            if flux:
                c = ComfyFluxCeiling(den.model, bits)
                options["patches_replace"] = {"dit": c.patches}

                def remove():
                    c.remove()
                    options["patches_replace"] = {}

                return (lambda i: setattr(c, "step", i)), remove, None
            c = CeilingCache(den.unit_modules, bits) if any_module else ComfyPixArtCeiling(den.model, bits)
            return (lambda i: setattr(c, "step", i)), c.remove, None

        return setup

    vs = [Variant("no cache", lambda: (None, lambda: None, None), None, "nocache")]
    if recompute:
        full = schedule_mod.Schedule.full(layout, den.steps, name="all-recompute")
        vs.append(Variant("patched, all recompute", pack(full), None, "recompute"))
    for s in presets:
        ps = schedule_mod.load_schedule(SCHEDULES / f"{s}.json")
        vs.append(Variant(f"pack {s}", pack(ps), s, "engine"))
        bits = (ps if ps.steps == den.steps else schedule_mod.remap_steps(ps, den.steps)).effective_bits()
        vs.append(Variant(f"ceiling {s}", ceiling(bits), s, "ceiling"))
        if any_module and not flux:  # ComfyUI's FLUX has its attention inline: no module computes that unit
            vs.append(Variant(f"any module cache {s}", ceiling(bits, any_module=True), s, "anymodule"))
    for sc in schedules:
        vs.append(Variant(f"pack {sc.name}", pack(sc), None, "engine"))
    if graphs:
        full = schedule_mod.Schedule.full(layout, den.steps, name="all-recompute")
        vs.append(Variant("graphs, no cache", pack(full, graphs=True), None, "graphs", persistent=True))
        for s in presets:
            ps = schedule_mod.load_schedule(SCHEDULES / f"{s}.json")
            vs.append(Variant(f"graphs {s}", pack(ps, graphs=True), s, "graphs", persistent=True))
            if flux:  # no graph mode for ComfyUI's FLUX (its graph rows run eagerly): no graph ceiling
                continue
            # the pack's Schedule is its own copy of ecad_core's: remapped here, so replay_bits only reads its bits
            rs = ps if ps.steps == den.steps else schedule_mod.remap_steps(ps, den.steps)
            vs.append(bench_diffusers.graph_ceiling_variant(den, rs, f"graphs ceiling {s}", s))
    return vs


def profile_loops(dens: list, out_dir: Path, device) -> dict:
    """torch.profiler tables (top ops by device time) of one no-cache loop of each denoiser."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    summary = {}
    for den in dens:
        den.loop()
        with profile(activities=acts) as prof:
            den.loop()
        sort = "self_device_time_total" if len(acts) > 1 else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=25)
        slug = den.name.replace(" ", "_").replace("²", "")
        (out_dir / f"profile_{slug}.txt").write_text(table)
        ev = prof.key_averages()
        summary[den.name] = {
            "cpu_total_ms": sum(e.self_cpu_time_total for e in ev) / 1e3,
            "device_total_ms": sum(getattr(e, "self_device_time_total", 0) for e in ev) / 1e3,
            "launches": sum(e.count for e in ev if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel"))),
            "top": [
                (e.key, round(getattr(e, "self_device_time_total", 0) / 1e3, 3), e.count)
                for e in sorted(ev, key=lambda e: -getattr(e, "self_device_time_total", 0))[:12]
            ],
        }
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="alpha", choices=("alpha", "sigma", "flux"))
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--presets", default="pixart-alpha-256-fast,pixart-alpha-256-faster,pixart-alpha-256-fastest")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument(
        "--graphs", action="store_true", help="also the Apply node's CUDA-graph mode and the ceiling in graphs (PixArt)"
    )
    ap.add_argument("--profile", help="folder for profiler tables (ComfyUI and diffusers PixArt, no cache)")
    ap.add_argument("--no-any-module", action="store_true", help="skip the any-module-cache reference variants")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    dtype = resolve_dtype(a.dtype, a.device)
    if a.variant == "flux" and a.dtype == "auto" and torch.device(a.device).type == "cuda":
        dtype = torch.bfloat16  # FLUX ships in bf16; fp16 overflows
    import_comfy(a.device)
    adapters, engine_mod, schedule_mod = pack_modules()
    presets = [p for p in a.presets.split(",") if p]
    out = {
        "bench": "comfy",
        "model": "flux-dev" if a.variant == "flux" else f"pixart-{a.variant}",
        "res": a.res,
        "steps": a.steps,
        "tiny": a.tiny,
        "dtype": str(dtype),
        "device": a.device,
        "hardware": hardware(a.device),
        "rounds": a.rounds,
    }
    with torch.no_grad():
        if a.variant == "flux":
            den = comfy_flux(a.res, tiny=a.tiny, device=a.device, dtype=dtype, steps=a.steps)
        else:
            den = comfy_pixart(a.variant, a.res, tiny=a.tiny, device=a.device, dtype=dtype, steps=a.steps)
        print(f"{den.name} ({'tiny' if a.tiny else 'full-size'}, {dtype}, {a.device}), {a.steps} steps", flush=True)
        out["denoiser"] = den.info
        vs = variants(
            den,
            presets,
            adapters,
            engine_mod,
            schedule_mod,
            graphs=a.graphs,
            graphs_mod=graphs_module() if a.graphs else None,
            any_module=not a.no_any_module,
        )
        out["variants"] = run_variants(den, vs, rounds=a.rounds, device=a.device)
        if a.out:
            write_json(a.out, out)
        if a.profile:
            pdir = Path(a.profile)
            pdir.mkdir(parents=True, exist_ok=True)
            try:
                dd = models.diffusers_pixart(a.variant, a.res, tiny=a.tiny, device=a.device, dtype=dtype, steps=a.steps)
                out["profile"] = profile_loops([den, dd], pdir, a.device)
                del dd
            except Exception as e:  # noqa: BLE001 - the timings above still count
                out["profile_error"] = f"{type(e).__name__}: {e}"
                print("  profile failed:", out["profile_error"], flush=True)
            for k, v in out.get("profile", {}).items():
                print(
                    f"  profile {k}: cpu {v['cpu_total_ms']:.1f} ms, device {v['device_total_ms']:.1f} ms, "
                    f"{v['launches']} launches",
                    flush=True,
                )
    if a.out:
        write_json(a.out, out)
    del den
    if torch.device(a.device).type == "cuda":
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
