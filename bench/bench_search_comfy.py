"""Per-image cost of the Evolve node's sampling path (ComfyUI, batched and one sample per call) against the CLI's
(diffusers, batched), on PixArt-alpha models of one shape (ComfyUI's tiny stock-detected checkpoint: width 1152,
16 heads, depth 2), with a candidate schedule applied as the search applies it.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m bench.bench_search_comfy --prompts 4 --steps 6 \
        --out bench/results/cpu-search-comfy-cost.json

The two paths run different PixArt implementations (ComfyUI's and diffusers'), each with its own sampler loop;
that difference is part of what the target (ComfyUI <= 1.5x the CLI per image) measures.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

from . import bench_comfy
from .common import hardware, write_json

REPO = Path(__file__).resolve().parents[1]


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (and the patched clone's first-call checks)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=32)  # ComfyUI's PixArt needs (W + H) / 2 >= 264
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models-root", default=str(REPO / ".cache" / "tiny-models"))
    ap.add_argument("--out")
    a = ap.parse_args(argv)

    bench_comfy.import_comfy("cpu")
    bench_comfy.pack_modules()
    import comfy.sd

    from ecad_core.diffusers.generate import diffusers_generate_fn
    from ecad_core.diffusers.tiny import tiny_pixart_pipeline
    from ecad_core.schedule import Schedule, make_layout

    sampling = importlib.import_module("comfyui_ecad_bench.nodes.sampling")
    cschedule = importlib.import_module("comfyui_ecad_bench.ecad_core.schedule")
    adapters = importlib.import_module("comfyui_ecad_bench.nodes.adapters")
    path = Path(a.models_root) / "diffusion_models" / "ecad_tiny_pixart_alpha.safetensors"
    model = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float32})
    lay = adapters.adapter_for(model).layout
    g = torch.Generator().manual_seed(0)
    neg = [[torch.zeros(1, 16, 4096), {}]]
    samples = [sampling.Sample([[torch.randn(1, 16, 4096, generator=g), {}]], neg, i) for i in range(a.prompts)]
    st = sampling.SamplerSettings(a.steps, 4.5, "euler", "normal", a.width, a.height)
    comfy_sched = cschedule.Schedule.every_n(lay, a.steps, 2)
    batched = sampling.Sampler(model, st, samples, batch_size=32)
    single = sampling.Sampler(model, st, samples, batch_size=1)

    pipe = tiny_pixart_pipeline("alpha", layers=2, heads=16, head_dim=72)
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"prompt number {i}" for i in range(a.prompts)]
    gen = diffusers_generate_fn(pipe, prompts, [0], a.steps, 4.5, a.height, a.width)
    cli_sched = Schedule.every_n(make_layout("pixart", 2), a.steps, 2)

    n = a.prompts
    rows = {
        "cli_batched": _best(lambda: gen(cli_sched), a.repeats) / n,
        "comfy_batched": _best(lambda: batched(comfy_sched), a.repeats) / n,
        "comfy_batch1": _best(lambda: single(comfy_sched), a.repeats) / n,
    }
    result = {
        "bench": "search-comfy-cost",
        "hardware": hardware("cpu"),
        "torch_threads": torch.get_num_threads(),
        "setup": vars(a),
        "seconds_per_image": {k: round(v, 4) for k, v in rows.items()},
        "comfy_batched_over_cli": round(rows["comfy_batched"] / rows["cli_batched"], 3),
        "comfy_batch1_over_batched": round(rows["comfy_batch1"] / rows["comfy_batched"], 3),
    }
    print(result)
    if a.out:
        write_json(a.out, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
