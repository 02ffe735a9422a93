"""Micro-benchmark of the engine's hot path: ``CacheEngine.call`` per unit, compute and reuse, with and without a
unit timer (the latency objective's seam). CPU, tiny tensors: it measures Python overhead only.

    .venv/bin/python -m bench.unit_call [--calls 200000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ecad_core import Schedule, make_layout
from ecad_core.engine import CacheEngine


def per_call_ns(engine: CacheEngine, calls: int, step: int) -> float:
    x = torch.ones(4)
    fn = torch.Tensor.clone
    engine.begin_run()
    engine.set_position(0)
    engine.call(0, fn, (x,), {})
    engine.set_position(step)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter_ns()
        for _ in range(calls):
            engine.call(0, fn, (x,), {})
        best = min(best, (time.perf_counter_ns() - t) / calls)
    engine.end_run()
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200_000)
    a = p.parse_args(argv)
    # unit 0: recomputed at step 1, reused at step 2
    sched = Schedule(make_layout("pixart", 1), np.array([[1, 1, 1], [1, 1, 1], [0, 1, 1]], bool))
    out = {}
    for timer in (None, lambda unit, compute: compute()):
        eng = CacheEngine(sched)
        eng.unit_timer = timer
        label = "timed" if timer else "untimed"
        out[f"{label}_compute_ns"] = round(per_call_ns(eng, a.calls, 1), 1)
        out[f"{label}_reuse_ns"] = round(per_call_ns(eng, a.calls, 2), 1)
    print(out)
    return out


if __name__ == "__main__":
    main()
