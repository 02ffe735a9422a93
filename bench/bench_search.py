"""Search throughput: schedule evaluations per minute, and where the search's time goes.

Runs a short NSGA-II search (``ecad_core.search.run_search``) on a diffusers
pipeline (the built-in tiny PixArt-α by default) and splits the wall time into
generating images (the evaluator's sampling runs, references included),
scoring them (the fidelity metric) and the search itself (NSGA-II, schedule
bookkeeping, checkpoints).

    python -m bench.bench_search --population 8 --generations 2 --out r.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from ecad_core.diffusers.adapters import find_diffusers_units
from ecad_core.diffusers.generate import DiffusersGenerate
from ecad_core.diffusers.tiny import tiny_pixart_pipeline
from ecad_core.search.evaluate import LocalEvaluator
from ecad_core.search.nsga import SearchSettings, run_search

from .common import hardware, write_json


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28, help="blocks of the tiny PixArt-α")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    pipe = tiny_pixart_pipeline("alpha", layers=a.layers).to(a.device)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a lighthouse at dusk", "a red fox in snow", "a bowl of fruit", "a city street at night"][: a.prompts]
    gen = DiffusersGenerate(pipe, prompts, [0], a.steps, 4.5, a.size, a.size)
    ev = LocalEvaluator(gen, space="latent", batch_size=None)
    scoring = {"s": 0.0, "calls": 0}
    inner = ev.evaluate

    def timed_evaluate(schedules):
        t0, g0 = time.perf_counter(), ev.seconds_generating
        out = inner(schedules)
        scoring["s"] += (time.perf_counter() - t0) - (ev.seconds_generating - g0)
        scoring["calls"] += len(schedules)
        return out

    ev.evaluate = timed_evaluate
    layout = find_diffusers_units(pipe.transformer).layout
    settings = SearchSettings(population=a.population, generations=a.generations, seed=0)
    t0 = time.perf_counter()
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        result = run_search(ev, layout, a.steps, tmp, settings, model="pixart-alpha")
    wall = time.perf_counter() - t0
    gen_s, score_s = ev.seconds_generating, scoring["s"]
    n_eval = scoring["calls"]
    out = {
        "bench": "search",
        "hardware": hardware(a.device),
        "device": a.device,
        "model": f"tiny PixArt-α ({a.layers} blocks)",
        "size": a.size,
        "steps": a.steps,
        "samples": len(prompts),
        "population": a.population,
        "generations": a.generations,
        "evaluations": n_eval,
        "generate_calls": ev.n_generate,
        "wall_s": round(wall, 3),
        "evaluations_per_min": round(60 * n_eval / wall, 2) if wall else None,
        "time_share": {
            "generating": round(gen_s / wall, 4),
            "scoring": round(score_s / wall, 4),
            "search_and_bookkeeping": round(max(wall - gen_s - score_s, 0) / wall, 4),
        },
        "seconds_per_generate_call": round(gen_s / max(ev.n_generate, 1), 4),
        "front_size": len(getattr(result, "front", []) or []),
    }
    print(
        f"search: {n_eval} evaluations in {wall:.1f} s = {out['evaluations_per_min']} per minute; "
        f"time: generating {100 * out['time_share']['generating']:.1f}%, scoring "
        f"{100 * out['time_share']['scoring']:.1f}%, search {100 * out['time_share']['search_and_bookkeeping']:.1f}%",
        flush=True,
    )
    if a.out:
        write_json(a.out, out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
