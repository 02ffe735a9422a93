"""Denoising-loop wall time on the diffusers path: no cache, this project's engine, the zero-overhead ceiling.

For each preset: the engine (``ecad_core.apply``), the ceiling (``bench.ceiling``: the same block
re-statement with no bookkeeping), any module cache (``bench.ceiling.CeilingCache``: unit-module outputs,
the old ceiling) and optionally (``--graphs``) the engine with CUDA graphs and the ceiling in CUDA graphs
(``bench.ceiling.CeilingGraphs``, the reference of the graph rows); plus no cache, the patched model with
everything recomputed (the engine's pure overhead), and the cost of offloading the cache.

    python -m bench.bench_diffusers --model pixart-alpha --res 256 \\
        --presets pixart-alpha-256-fast,pixart-alpha-256-faster,pixart-alpha-256-fastest --graphs --out r.json
    python -m bench.bench_diffusers --tiny --device cpu ...   # CPU smoke run on tiny models
"""

from __future__ import annotations

import argparse
import sys

import torch

from ecad_core import Schedule, load_schedule
from ecad_core.diffusers.adapters import find_diffusers_units
from ecad_core.diffusers.api import apply

from . import models
from .ceiling import CeilingCache, CeilingGraphs, ceiling_for
from .common import SCHEDULES, hardware, replay_bits, resolve_dtype, write_json
from .runner import Variant, run_variants


def build(model: str, res: int, *, tiny: bool, device, dtype, steps: int):
    if model in ("pixart-alpha", "pixart-sigma"):
        return models.diffusers_pixart(model.split("-")[1], res, tiny=tiny, device=device, dtype=dtype, steps=steps)
    if model == "flux-dev":
        return models.diffusers_flux(res, tiny=tiny, device=device, dtype=dtype, steps=steps)
    raise SystemExit(f"bench_diffusers: unknown --model {model!r} (pixart-alpha, pixart-sigma, flux-dev)")


def engine_variant(den, sched: Schedule, kind: str, name: str, preset, **apply_kw) -> Variant:
    def setup():
        h = apply(den.model, sched, **apply_kw)

        h.tracker.step_hooked = True  # the loop below plays the pipeline's scheduler

        def pre(i):
            if i == 0 and den.timesteps is not None:  # what a pipeline's scheduler.set_timesteps tells it
                h.tracker.scheduler_set(den.timesteps)
            elif i > 0:  # and its scheduler.step after each step
                h.tracker.scheduler_stepped()

        stats = lambda: {**h.stats.as_dict(), **({"cuda_graphs": h.cuda_graphs} if h.cuda_graphs else {})}
        return pre, h.remove, stats

    return Variant(name, setup, preset, kind, persistent=kind == "graphs")


def ceiling_variant(den, sched: Schedule, name: str, preset, kind: str = "ceiling") -> Variant:
    """The ceiling (``kind`` "ceiling") or any module cache ("anymodule") replaying ``sched``."""
    bits = replay_bits(sched, den.steps)

    def setup():
        c = ceiling_for(den.model, bits) if kind == "ceiling" else CeilingCache(den.unit_modules, bits)
        return (lambda i: setattr(c, "step", i)), c.remove, None

    return Variant(name, setup, preset, kind)


def graph_ceiling_variant(den, sched: Schedule, name: str, preset) -> Variant:
    """The ceiling in static buffers, captured in CUDA graphs (``CeilingGraphs``); without CUDA it runs eagerly
    and its stats say why, as the engine's graph rows do."""
    bits = replay_bits(sched, den.steps)

    def setup():
        c = ceiling_for(den.model, bits, static=True)
        g = CeilingGraphs(den.model, c)

        def remove():
            g.remove()
            c.remove()

        return (lambda i: setattr(c, "step", i)), remove, (lambda: {"cuda_graphs": g.status()})

    return Variant(name, setup, preset, "graphs-ceiling", persistent=True)


def variants_for(
    den, presets: list[Schedule], *, graphs: bool, offload: bool, recompute: bool, any_module: bool = True
) -> list[Variant]:
    layout = find_diffusers_units(den.model).layout
    full = Schedule.full(layout, den.steps, name="all-recompute")
    vs = [Variant("no cache", lambda: (None, lambda: None, None), None, "nocache")]
    if recompute:
        vs.append(engine_variant(den, full, "recompute", "patched, all recompute", None))
    for s in presets:
        vs.append(engine_variant(den, s, "engine", f"engine {s.name}", s.name))
        vs.append(ceiling_variant(den, s, f"ceiling {s.name}", s.name))
        if any_module:
            vs.append(ceiling_variant(den, s, f"any module cache {s.name}", s.name, "anymodule"))
    if offload and presets:
        s = presets[0]
        vs.append(engine_variant(den, s, "offload", f"engine+offload {s.name}", s.name, offload_device="cpu"))
    if graphs:
        vs.append(engine_variant(den, full, "graphs", "graphs, no cache", None, cuda_graphs=True))
        for s in presets:
            vs.append(engine_variant(den, s, "graphs", f"graphs {s.name}", s.name, cuda_graphs=True))
            vs.append(graph_ceiling_variant(den, s, f"graphs ceiling {s.name}", s.name))
    return vs


def load_presets(names: str) -> list[Schedule]:
    return [load_schedule(SCHEDULES / f"{n}.json") for n in names.split(",") if n]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pixart-alpha")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--presets", default="pixart-alpha-256-fast,pixart-alpha-256-faster,pixart-alpha-256-fastest")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", help="fp16, bf16, fp32 or auto (fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths (same block counts): a CPU smoke run")
    ap.add_argument("--graphs", action="store_true", help="also the engine and the ceiling in CUDA graphs")
    ap.add_argument("--offload", action="store_true", help="also the engine with the cache in CPU memory")
    ap.add_argument("--no-recompute", action="store_true", help="skip the all-recompute overhead variant")
    ap.add_argument("--no-any-module", action="store_true", help="skip the any-module-cache reference variants")
    ap.add_argument("--out", help="write the results here (JSON)")
    a = ap.parse_args(argv)
    dtype = resolve_dtype(a.dtype, a.device)
    if a.model == "flux-dev" and a.dtype == "auto" and torch.device(a.device).type == "cuda":
        dtype = torch.bfloat16
    presets = load_presets(a.presets)
    with torch.no_grad():
        den = build(a.model, a.res, tiny=a.tiny, device=a.device, dtype=dtype, steps=a.steps)
        layout = find_diffusers_units(den.model).layout
        for s in presets:
            s.check_fits(layout, den.name)
        print(f"{den.name} ({'tiny' if a.tiny else 'full-size'}, {dtype}, {a.device}), {a.steps} steps", flush=True)
        vs = variants_for(
            den,
            presets,
            graphs=a.graphs,
            offload=a.offload,
            recompute=not a.no_recompute,
            any_module=not a.no_any_module,
        )
        res = run_variants(den, vs, rounds=a.rounds, device=a.device)
    out = {
        "bench": "diffusers",
        "model": a.model,
        "res": a.res,
        "steps": a.steps,
        "tiny": a.tiny,
        "dtype": str(dtype),
        "device": a.device,
        "hardware": hardware(a.device),
        "denoiser": den.info,
        "rounds": a.rounds,
        "variants": res,
    }
    if a.out:
        write_json(a.out, out)
    del den
    if torch.device(a.device).type == "cuda":
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
