"""The Apply node's CUDA-graph mode on ComfyUI's own PixArt: the safety rules, on a GPU.

Installs the pack on ComfyUI's PixArt-α (full-size random weights, 512², 20 steps)
exactly as the Apply node does (adapter + ``install_graphs``), and checks, each
against the eager engine's output of the same schedule:

1. graphs replay and the output is bit-identical;
2. a weight replaced by a new tensor (what a ComfyUI re-load or LoRA re-patch does)
   makes the next run capture again, never replay against the old storage;
3. a weight function (LoRA on the fly) makes a run eager, with the reason;
4. a parameter left on the CPU (low-VRAM partial loading) makes a run eager, with the reason;
5. with those undone, graphs replay again.

    python -m bench.comfy_graphs_check [--out r.json] [--tiny --device cpu]
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import bench_comfy
from .common import hardware, max_abs_diff, write_json


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="pixart-alpha-256-fast")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    bench_comfy.import_comfy(a.device)
    adapters, engine_mod, schedule_mod = bench_comfy.pack_modules()
    graphs_mod = bench_comfy.graphs_module()
    dtype = torch.float16 if torch.device(a.device).type == "cuda" else torch.float32
    out = {"hardware": hardware(a.device), "res": a.res, "steps": a.steps, "preset": a.preset, "checks": {}}
    with torch.no_grad():
        den = bench_comfy.comfy_pixart("alpha", a.res, tiny=a.tiny, device=a.device, dtype=dtype, steps=a.steps)
        vs = {
            v.name: v
            for v in bench_comfy.variants(
                den, [a.preset], adapters, engine_mod, schedule_mod, recompute=False, graphs=True, graphs_mod=graphs_mod
            )
        }
        pre, teardown, _ = vs[f"pack {a.preset}"].setup()
        eager = den.loop(pre)
        teardown()
        pre, teardown, stats = vs[f"graphs {a.preset}"].setup()
        checks = out["checks"]

        def run(name):
            x = den.loop(pre)
            g = dict(stats()["cuda_graphs"] or {})
            checks[name] = {"max_abs_diff_vs_eager": max_abs_diff(x, eager), **g}
            print(f"  {name:<34} diff {checks[name]['max_abs_diff_vs_eager']:.3g}  {g}", flush=True)
            return g

        try:
            run("first image (warm-up, capture)")
            g = run("second image (replays)")
            blk = den.model.blocks[0]
            old = blk.attn.qkv.weight
            blk.attn.qkv.weight = torch.nn.Parameter(old.detach().clone(), requires_grad=False)
            g2 = run("after a weight moved")
            checks["recaptured"] = g2.get("recaptures", 0) == g.get("recaptures", 0) + 1
            blk.attn.qkv.weight_function = [lambda w, **kw: w]
            run("with a weight function")
            blk.attn.qkv.weight_function = []
            # what low-VRAM loading leaves: a weight on the CPU that ComfyUI casts to the GPU per call
            blk.mlp.fc1.bias.data = blk.mlp.fc1.bias.data.cpu()
            blk.mlp.fc1.comfy_cast_weights = True
            run("with a parameter on the CPU")
            blk.mlp.fc1.bias.data = blk.mlp.fc1.bias.data.to(a.device)
            blk.mlp.fc1.comfy_cast_weights = False
            run("all back on the GPU")
            # no size/aspect conditioning given: PixArt-α makes it from host data inside its forward; the
            # graph mode makes the same tensors before capture (the bench's values are the same ones)
            ctx, ts = den.inputs["context"], den.inputs["timesteps"]
            den.call = lambda x, i: den.model(x, ts[i].expand(x.shape[0]), context=ctx, transformer_options={})
            run("without c_size / c_ar")
        finally:
            teardown()
    c = checks
    out["ok"] = (
        bool(
            all(v["max_abs_diff_vs_eager"] == 0 for k, v in c.items() if isinstance(v, dict))
            and c["second image (replays)"].get("replays", 0) > 0
            and c["recaptured"]
            and "weight functions" in (c["with a weight function"].get("reason") or "")
            and "casts" in (c["with a parameter on the CPU"].get("reason") or "")
            and not c["all back on the GPU"].get("reason")
            and not c["without c_size / c_ar"].get("reason")
        )
        if torch.device(a.device).type == "cuda"
        else None
    )
    print("comfy graphs check:", {True: "OK", False: "FAILED", None: "n/a on the CPU"}[out["ok"]], flush=True)
    if a.out:
        write_json(a.out, out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
