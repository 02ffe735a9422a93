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
"""
from __future__ import annotations

import argparse
import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .common import write_json

PRESETS = "pixart-alpha-256-fast,pixart-alpha-256-faster,pixart-alpha-256-fastest"


# non-view ops that launch no kernel (allocation, metadata)
NO_KERNEL = {"aten._unsafe_view", "aten.empty", "aten.empty_strided", "aten.empty_like", "aten.detach",
             "aten.lift_fresh", "aten._reshape_alias"}


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


def count_variants(den, variants) -> dict:
    """Ops of one image per variant (set up, one loop under the counter, torn down)."""
    out = {}
    for v in variants:
        pre, teardown, stats_fn = v.setup()
        try:
            with torch.no_grad(), OpCounter() as c:
                den.loop(pre)
            stats = stats_fn() if stats_fn else None
        finally:
            teardown()
        out[v.name] = {"ops": c.total, "by_op": dict(c.ops.most_common(12)),
                       **({"reused": stats["reused"]} if stats else {})}
    base = out[variants[0].name]["ops"]
    for v in variants:
        r = out[v.name]
        r["vs_no_cache"] = round(r["ops"] / base, 4)
        if v.kind == "engine":
            r["vs_ceiling"] = round(r["ops"] / out[v.name.replace("engine", "ceiling", 1)
                                                   .replace("pack", "ceiling", 1)]["ops"], 4)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default="diffusers", choices=("diffusers", "comfy"))
    ap.add_argument("--variant", default="alpha", choices=("alpha", "sigma"))
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--presets", default=PRESETS)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    kw = dict(tiny=True, device="cpu", dtype=torch.float32, steps=a.steps)
    names = [p for p in a.presets.split(",") if p]
    with torch.no_grad():
        if a.path == "diffusers":
            from . import bench_diffusers
            den = bench_diffusers.build(f"pixart-{a.variant}", a.res, **kw)
            vs = bench_diffusers.variants_for(den, bench_diffusers.load_presets(",".join(names)), graphs=False,
                                              offload=False, recompute=True)
        else:
            from . import bench_comfy
            bench_comfy.import_comfy("cpu")
            adapters, engine_mod, schedule_mod = bench_comfy.pack_modules()
            den = bench_comfy.comfy_pixart(a.variant, a.res, **kw)
            vs = bench_comfy.variants(den, names, adapters, engine_mod, schedule_mod)
        res = {"bench": "op_counts", "path": a.path, "model": f"pixart-{a.variant}", "res": a.res,
               "steps": a.steps, "variants": count_variants(den, vs)}
    print(f"{a.path} PixArt-{a.variant} {a.res}², {a.steps} steps: device operations per image")
    for k, r in res["variants"].items():
        extra = f"  engine/ceiling {r['vs_ceiling']:.3f}" if "vs_ceiling" in r else ""
        print(f"  {k:36s} {r['ops']:8d}  x{r['vs_no_cache']:.3f} of no cache{extra}")
    if a.out:
        write_json(a.out, res)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
