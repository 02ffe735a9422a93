"""CUDA-graph mode through real diffusers pipelines: output equal to the eager engine, and its status.

Runs the built-in tiny PixArt-α and FLUX pipelines (text encoders, scheduler, CFG, VAE skipped via
latent output) twice per schedule: eager engine, then ``cuda_graphs=True`` for two images (the first
captures). Needs a GPU; prints one line per case and writes JSON with ``--out``.

    python -m bench.graphs_check --out graphs.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from ecad_core import Schedule, cached
from ecad_core.diffusers.adapters import find_diffusers_units
from ecad_core.diffusers.tiny import tiny_flux_pipeline, tiny_pixart_pipeline

from .common import hardware, write_json


def _pipes(device):
    px = tiny_pixart_pipeline("alpha", layers=4).to(device)
    fx = tiny_flux_pipeline(double=2, single=4).to(device)
    return {
        "tiny PixArt-α (CFG batch)": (px, dict(height=128, width=128, guidance_scale=4.5, clean_caption=False)),
        "tiny FLUX.1-dev": (fx, dict(height=128, width=128, guidance_scale=3.5, max_sequence_length=64)),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    results = {"hardware": hardware(a.device), "cases": {}}
    for name, (pipe, kw) in _pipes(a.device).items():
        pipe.set_progress_bar_config(disable=True)
        layout = find_diffusers_units(pipe.transformer).layout
        rng = np.random.default_rng(0)
        bits = rng.random((a.steps, layout.n_units)) < 0.4
        sched = Schedule(layout, bits, name="random-40")

        def gen(pipe=pipe, kw=kw, **extra):
            return pipe(
                prompt=["a red cube", "a blue sphere"],
                num_inference_steps=a.steps,
                output_type="latent",
                generator=torch.Generator("cpu").manual_seed(0),
                **kw,
                **extra,
            ).images

        with torch.no_grad():
            with cached(pipe, sched) as h:
                eager = gen()
                eager_stats = h.finish_run().as_dict()
            with cached(pipe, sched, cuda_graphs=True) as h:
                first = gen()
                second = gen()
                st = h.finish_run().as_dict()
                status = h.cuda_graphs
        r = {
            "equal_first": bool(torch.equal(first, eager)),
            "equal_second": bool(torch.equal(second, eager)),
            "max_abs_diff": float((second.float() - eager.float()).abs().max()),
            "status": status,
            "reused_eager": eager_stats["reused"],
            "reused_graphs": st["reused"],
        }
        results["cases"][name] = r
        print(
            f"{name}: equal {r['equal_first']}/{r['equal_second']} (max diff {r['max_abs_diff']:.3g}), "
            f"reused {r['reused_eager']} vs {r['reused_graphs']}, graphs {status}",
            flush=True,
        )
    if a.out:
        write_json(a.out, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
