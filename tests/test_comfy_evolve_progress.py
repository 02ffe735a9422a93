"""Evolve's progress while it runs (issue #19 B.5), on ComfyUI's own progress bar in-process: the current front as
the bar's preview image after every generation, and an estimate of the total time after the first one."""

from __future__ import annotations

import importlib
import logging
import time

import numpy as np
import pytest

from bench import bench_comfy
from ecad_core import make_layout

pytestmark = pytest.mark.comfy


class Sleepy:
    """A fixed time per schedule (so the estimate has something steady to measure), losses that grow with reuse."""

    def __init__(self, seconds=0.03):
        self.seconds = seconds
        self.batch_size = 1
        self.slept = 0.0

    def evaluate(self, schedules):
        out = []
        for s in schedules:
            time.sleep(self.seconds)
            self.slept += self.seconds
            b = s.effective_bits()
            out.append(float((~b).sum() / b.size) ** 2 + 0.001 * float((~b[1]).sum()))
        return out


@pytest.fixture(scope="module")
def evolve_node(comfy_dir):
    bench_comfy.import_comfy("cpu")
    bench_comfy.pack_modules()
    return importlib.import_module("comfyui_ecad_bench.nodes.evolve_node")


def test_front_preview_after_every_generation_and_time_estimate(evolve_node, tmp_path, caplog):
    import comfy.utils
    from PIL import Image

    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda v, t, preview, node_id=None: seen.append((v, t, preview)))
    try:
        settings = evolve_node.SearchSettings(population=6, generations=3, seed=0)
        progress = evolve_node._Progress(settings, tmp_path)
        ev = Sleepy()
        search = evolve_node.SearchRun(ev, make_layout("pixart", 2), 6, tmp_path, settings, progress=progress)
        progress.attach(search)
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO, logger="ecad"):
            search.run()
        took = time.monotonic() - t0
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    previews = [p for _, _, p in seen if p is not None]
    assert len(previews) == 4  # generation 0 and 3 evolved ones
    for kind, img, size in previews:
        assert kind == "PNG" and isinstance(img, Image.Image) and img.size[0] > 100 and size >= 512
    assert np.asarray(previews[-1][1]).std() > 0  # a drawn plot, not a blank
    assert seen[-1][0] == seen[-1][1]  # the bar ends full
    # estimated once after generation 0, from its time per schedule: the evaluations' time, give or take
    # (the plots drawn between generations are left out: on a loaded CPU they can take longer than here)
    assert progress.first_estimate_s is not None and 0.5 * ev.slept < progress.first_estimate_s < 3 * took
    first = [r.getMessage() for r in caplog.records if "first generation took" in r.getMessage()]
    assert len(first) == 1 and "generation 1/4 done" in first[0] and "min in all" in first[0]
    assert progress.text.startswith("generation 4/4 done")


def test_time_budget_bounds_the_estimate(evolve_node, tmp_path):
    settings = evolve_node.SearchSettings(population=4, generations=None, time_budget_s=0.5, seed=0)
    progress = evolve_node._Progress(settings, tmp_path)
    search = evolve_node.SearchRun(Sleepy(0.02), make_layout("pixart", 2), 6, tmp_path, settings, progress=progress)
    progress.attach(search)
    search.run()
    assert progress.first_estimate_s == 0.5
