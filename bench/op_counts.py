"""Device operations per image: no cache, this project's engine, the ceiling — counted, not timed.

Every non-view aten operation that reaches the backend (counted with a
TorchDispatchMode) is one kernel launch on a GPU. Where a model is launch-bound
(PixArt-α at 256² on an H100, ComfyUI's PixArt at 512²), wall time follows this
count; unlike a CPU timing it does not depend on the machine, so it can be
measured without a GPU and checked by a test. The tiny widths give the same
counts as the full-size models (counts depend on the block structure only).
ComfyUI picks another attention function on the CPU (``attention_split`` or
``attention_basic``: a few ops more per attention than SDPA), so its absolute
counts are CPU ones; the differences between variants are not.

    python -m bench.op_counts --path diffusers --res 256 --out r.json
    python -m bench.op_counts --path comfy --res 512
    python -m bench.op_counts --model flux-dev --res 1024
    python -m bench.op_counts --family dit_blocks        # or pixart, flux, any family; 'all': every one

``--family`` counts every tiny test checkpoint of a family on the ComfyUI path (``bench/comfy_family.py``):
no cache, all recomputed, the family's own search seeds (every-2, attention every 2 where the family record
names attention components) and the shipped presets whose layout fits; it writes
``bench/results/cpu-op-counts-comfy-<family>.json`` (the first image of the first patched variant, which runs
the one-off checks, is counted apart). Adding a family needs nothing here: its adapter in ``nodes/adapters/``
and its tiny recipe in ``tests/comfy_harness/make_tiny.py`` are enough (see ``bench/comfy_family.py`` for a
recipe whose conditioning widths have unusual names). Then run it for the family and commit the file:
``tests/test_op_count_tables.py`` regenerates every ``cpu-op-counts-*.json`` it finds and compares.
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .common import REPO, comfy_version, write_json

RESULTS = REPO / "bench" / "results"

PRESETS = {
    "pixart-alpha": "pixart-alpha-256-fast,pixart-alpha-256-faster,pixart-alpha-256-fastest",
    "pixart-sigma": "pixart-sigma-256-fast",
    "flux-dev": "flux-dev-1024-fast,flux-dev-256-faster",
}


# non-view ops that launch no kernel (allocation, metadata)
NO_KERNEL = {
    "aten._unsafe_view",
    "aten.empty",
    "aten.empty_strided",
    "aten.empty_like",
    "aten.detach",
    "aten.lift_fresh",
    "aten._reshape_alias",
}


class OpCounter(TorchDispatchMode):
    """Counts the non-view aten operations dispatched inside the ``with`` block, by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and str(func.overloadpacket) not in NO_KERNEL:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


class CopySites(TorchDispatchMode):
    """Where copies (clone, copy_, _to_copy) are made: the innermost model-code frame of each."""

    COPIES = frozenset({"aten.clone", "aten.copy_", "aten._to_copy"})

    def __init__(self, marks=("ComfyUI", "diffusers")):
        super().__init__()
        self.marks, self.sites = marks, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in self.COPIES:
            frames = [f for f in traceback.extract_stack() if any(m in f.filename for m in self.marks)]
            f = frames[-1] if frames else None
            self.sites[f"{name} at {Path(f.filename).name}:{f.lineno} {f.line}" if f else f"{name} (torch)"] += 1
        return func(*args, **(kwargs or {}))


def versions(path: str) -> dict:
    """What the counts depend on besides this repository: torch, and ComfyUI or diffusers (the model code)."""
    if path == "comfy":
        return {"torch": torch.__version__, "comfyui": comfy_version()}
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}


def per_call(den, comfy_gpu_attention: bool = False) -> dict:
    """Ops and copy sites of one model call (no cache). ``comfy_gpu_attention``: ComfyUI's PixArt with
    ``attention_pytorch`` (what it runs on an NVIDIA GPU) instead of its CPU choice."""
    import contextlib

    ctx = contextlib.nullcontext()
    if comfy_gpu_attention:
        from unittest import mock

        import comfy.ldm.modules.attention as attention

        ctx = mock.patch("comfy.ldm.pixart.blocks.optimized_attention", attention.attention_pytorch)
    with ctx, torch.no_grad():
        x = den.x0.clone()
        with OpCounter() as c:
            den.call(x, 0)
        with CopySites() as w:
            den.call(x, 0)
    return {"ops": c.total, "by_op": dict(c.ops.most_common(10)), "copies": dict(w.sites.most_common())}


def _count(den, v) -> tuple[OpCounter, dict | None]:
    pre, teardown, stats_fn = v.setup()
    try:
        with torch.no_grad(), OpCounter() as c:
            den.loop(pre)
        return c, (stats_fn() if stats_fn else None)
    finally:
        teardown()


def count_variants(den, variants) -> dict:
    """Ops of one image per variant (set up, one loop under the counter, torn down), in the steady state: the
    first image of the first patched variant also runs each re-stated block's one-off check against the
    block's own forward; it is counted apart (``first_image_ops``) and the variant counted again."""
    out = {}
    first = True
    for v in variants:
        c, stats = _count(den, v)
        extra = {}
        if first and v.kind in ("recompute", "engine"):
            first = False
            extra["first_image_ops"] = c.total
            c, stats = _count(den, v)
        out[v.name] = {
            "ops": c.total,
            "by_op": dict(c.ops.most_common()),
            **({"reused": stats["reused"]} if stats else {}),
            **extra,
        }
    base = out[variants[0].name]["ops"]
    for v in variants:
        r = out[v.name]
        r["vs_no_cache"] = round(r["ops"] / base, 4)
        ceiling = v.name.replace("engine", "ceiling", 1).replace("pack", "ceiling", 1)
        if v.kind == "engine" and ceiling in out:
            r["vs_ceiling"] = round(r["ops"] / out[ceiling]["ops"], 4)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default="diffusers", choices=("diffusers", "comfy"))
    ap.add_argument("--model", default="pixart-alpha", choices=tuple(PRESETS))
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--steps", type=int, help="default: 20 (--family: 10, so that CI regenerates it quickly)")
    ap.add_argument("--presets", help="comma-separated shipped presets (default: the model's)")
    ap.add_argument(
        "--per-call",
        action="store_true",
        help="one no-cache call of ComfyUI's PixArt (GPU attention function) and diffusers': ops and "
        "where copies are made",
    )
    ap.add_argument(
        "--family",
        help="a family the pack's ComfyUI adapters serve (or 'all'), on its tiny test checkpoints: writes "
        "bench/results/cpu-op-counts-comfy-<family>.json unless --out says otherwise",
    )
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    a.steps = a.steps or (10 if a.family else 20)
    if a.per_call:
        return compare_per_call(a)
    if a.family:
        return count_family(a, list(argv) if argv is not None else sys.argv[1:])
    kw = dict(tiny=True, device="cpu", dtype=torch.float32, steps=a.steps)
    names = [p for p in (a.presets or PRESETS[a.model]).split(",") if p]
    with torch.no_grad():
        if a.path == "diffusers":
            from . import bench_diffusers

            den = bench_diffusers.build(a.model, a.res, **kw)
            vs = bench_diffusers.variants_for(
                den, bench_diffusers.load_presets(",".join(names)), graphs=False, offload=False, recompute=True
            )
        else:
            from . import bench_comfy

            bench_comfy.import_comfy("cpu")
            adapters, engine_mod, schedule_mod = bench_comfy.pack_modules()
            den = (
                bench_comfy.comfy_flux(a.res, **kw)
                if a.model == "flux-dev"
                else bench_comfy.comfy_pixart(a.model.split("-")[1], a.res, **kw)
            )
            vs = bench_comfy.variants(den, names, adapters, engine_mod, schedule_mod)
        res = {
            "bench": "op_counts",
            "argv": ["--path", a.path, "--model", a.model, "--res", str(a.res), "--steps", str(a.steps)]
            + (["--presets", a.presets] if a.presets else []),
            "path": a.path,
            "versions": versions(a.path),
            "model": a.model,
            "res": a.res,
            "steps": a.steps,
            "variants": count_variants(den, vs),
        }
    print(f"{a.path} {a.model} {a.res}², {a.steps} steps: device operations per image")
    for k, r in res["variants"].items():
        extra = f"  engine/ceiling {r['vs_ceiling']:.3f}" if "vs_ceiling" in r else ""
        if "first_image_ops" in r:
            extra += f"  (first image {r['first_image_ops']}: each re-stated block checked once)"
        print(f"  {k:36s} {r['ops']:8d}  x{r['vs_no_cache']:.3f} of no cache{extra}")
    if a.out:
        write_json(a.out, res)
    return res


def count_family(a, argv) -> dict:
    """Op counts of every tiny checkpoint of a family (``bench/comfy_family.py``): no cache, all-recompute, the
    family's seed schedules and the presets that fit; one result file per family."""
    from . import bench_comfy, comfy_family

    bench_comfy.import_comfy("cpu")
    adapters, engine_mod, schedule_mod = bench_comfy.pack_modules()
    fams = comfy_family.families(adapters) if a.family == "all" else [a.family]
    if a.family != "all" and a.family not in comfy_family.families(adapters):
        raise SystemExit(
            f"op_counts: no ComfyUI adapter serves family {a.family!r}; known: "
            f"{', '.join(comfy_family.families(adapters))}"
        )
    if a.out and len(fams) > 1:
        raise SystemExit("op_counts: --out names one file; --family all writes one per family")
    done = {}
    for fam in fams:
        names = comfy_family.tiny_models(fam, adapters)
        if not names:  # still written: a file that had models and lost them (another family took them) shows
            print(f"{fam}: no tiny checkpoint in tests/comfy_harness/make_tiny.py serves it")
        res = {
            "bench": "op_counts",
            "argv": ["--family", fam, "--steps", str(a.steps)],
            "path": "comfy",
            "versions": versions("comfy"),
            "family": fam,
            "steps": a.steps,
            "models": {},
        }
        for name in names:
            with torch.no_grad():
                den = comfy_family.load(name, steps=a.steps)
                try:
                    layout = adapters.adapter_of(den.model).layout
                except Exception as e:  # noqa: BLE001 - a test checkpoint the pack refuses (PixArt 256 pe)
                    res["models"][name] = {"model": type(den.model).__name__, "refused": str(e)}
                    print(f"{fam}: {name}: refused by the pack: {e}")
                    continue
                seeds = comfy_family.seed_schedules(layout, a.steps, schedule_mod)
                presets = comfy_family.fitting_presets(layout, schedule_mod) if a.presets is None else []
                scheds = seeds + [
                    schedule_mod.remap_steps(schedule_mod.load_schedule(bench_comfy.SCHEDULES / f"{p}.json"), a.steps)
                    for p in presets
                ]
                vs = bench_comfy.variants(den, [], adapters, engine_mod, schedule_mod, schedules=scheds)
                r = {
                    "model": type(den.model).__name__,
                    "res": den.info["res"],
                    "layout": layout.describe(),
                    "variants": count_variants(den, vs),
                }
            res["models"][name] = r
            print(
                f"{fam}: {name} ({r['model']}, {r['layout']}) {r['res']}², {a.steps} steps: device operations per image"
            )
            for k, v in r["variants"].items():
                extra = f"  (first image {v['first_image_ops']}: checks included)" if "first_image_ops" in v else ""
                print(f"  {k:44s} {v['ops']:8d}  x{v['vs_no_cache']:.3f} of no cache{extra}")
        write_json(a.out or RESULTS / f"cpu-op-counts-comfy-{fam}.json", res)
        done[fam] = res
    return done[fams[0]] if len(fams) == 1 and done else done


def compare_per_call(a) -> dict:
    from . import bench_comfy, models

    if not a.model.startswith("pixart-"):
        raise SystemExit("op_counts --per-call compares the PixArt paths: use --model pixart-alpha or pixart-sigma")
    variant = a.model.split("-")[1]
    bench_comfy.import_comfy("cpu")
    kw = dict(tiny=True, device="cpu", dtype=torch.float32, steps=1)
    with torch.no_grad():
        res = {
            "bench": "op_counts per call",
            "argv": ["--per-call", "--model", a.model, "--res", str(a.res)],
            "versions": {**versions("comfy"), **versions("diffusers")},
            "res": a.res,
            "model": a.model,
            "comfy": per_call(bench_comfy.comfy_pixart(variant, a.res, **kw), comfy_gpu_attention=True),
            "diffusers": per_call(models.diffusers_pixart(variant, a.res, **kw)),
        }
    for k in ("comfy", "diffusers"):
        r = res[k]
        print(f"{k}: {r['ops']} ops per call; {sum(r['copies'].values())} copies")
        for site, n in r["copies"].items():
            print(f"  {n:4d}  {site}")
    if a.out:
        write_json(a.out, res)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
