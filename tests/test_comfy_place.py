"""Where a ComfyUI run sits on its trajectory (nodes/comfy_run.py: find_slice, TRAJECTORIES), against ComfyUI's
own schedulers (its code imported in-process): the same answer for every scheduler, never the model's timestep
fraction (which put the second half of a 4-step PixArt run at "denoise 0.334" with the normal scheduler)."""

from __future__ import annotations

import importlib
import logging
import time

import numpy as np
import pytest
import torch

from bench import bench_comfy

SCHEDULERS = ["normal", "karras", "simple", "beta", "exponential", "sgm_uniform"]


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    bench_comfy.import_comfy("cpu")
    bench_comfy.pack_modules()
    run = importlib.import_module("comfyui_ecad_bench.nodes.comfy_run")
    import comfy.model_sampling as ms
    import comfy.samplers as cs

    class Discrete(ms.ModelSamplingDiscrete, ms.EPS):  # PixArt's
        pass

    class Flow(ms.ModelSamplingFlux, ms.CONST):  # FLUX's
        pass

    return run, cs, {"discrete": Discrete(), "flow": Flow()}


@pytest.mark.parametrize("kind", ["discrete", "flow"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_slice_is_found_whatever_the_scheduler(comfy, kind, scheduler):
    run, cs, samplings = comfy
    m = samplings[kind]
    full = cs.calculate_sigmas(m, scheduler, 8).float()
    i2i = cs.calculate_sigmas(m, scheduler, int(4 / 0.3)).float()[-5:]  # KSampler: 4 steps at denoise 0.3
    whole = run.find_slice(m, full)
    assert (whole.steps, whole.start, whole.full) == (8, 0, 8)
    got = run.find_slice(m, i2i)
    assert (got.steps, got.start, got.full) == (4, 9, 13)
    tail = run.find_slice(m, full[4:])  # KSamplerAdvanced start_at_step 4, SplitSigmas' second half
    assert (tail.steps, tail.start, tail.full) == (4, 4, 8)
    first = run.find_slice(m, full[:5])  # a first stage, stopped early (end_at_step 4)
    # sgm_uniform's 8 steps begin as normal's 9 do: placed one step long (documented)
    assert (first.steps, first.start, first.full) == (4, 0, 9 if scheduler == "sgm_uniform" else 8)
    cut = full[:5].clone()
    cut[-1] = 0  # force_full_denoise: a stage cut short ends at 0 (one value fewer to tell lists apart)
    got = run.find_slice(m, cut)
    assert got.start == 0 and abs(got.full - 8) <= 1, got


def test_stages_continue_across_models_and_custom_sigmas_are_said(comfy):
    run, cs, samplings = comfy
    m = samplings["flow"]
    traj = run._Trajectories()
    full = cs.calculate_sigmas(m, "simple", 10).float()
    one = traj.place(m, full[:4])
    two = traj.place(samplings["flow"], full[3:7])  # a middle stage: placed by the one before it
    three = traj.place(m, full[6:])
    assert [(p.slice.start, p.slice.steps, p.slice.full, p.stage) for p in (one, two, three)] == [
        (0, 3, 10, 1),
        (3, 3, 10, 2),
        (6, 4, 10, 3),
    ]
    assert two.words() == "(stage 2 of a split run)"
    # no scheduler makes these: read as a whole run, and the log says so; the search gives up within its budget
    custom = torch.tensor([float(m.sigma_max) * 0.97, 0.61, 0.33, 0.2])
    t = time.perf_counter()
    p = traj.place(m, custom)
    assert time.perf_counter() - t < 5
    assert not p.found and "not found among ComfyUI's schedulers" in p.words()
    assert (p.slice.start, p.slice.full) == (0, 3)
    alone = traj.place(m, full[3:7])  # a middle slice with no stage before it
    assert not alone.found


def test_a_finished_run_reaches_its_listeners_and_a_failing_one_costs_nothing(comfy, caplog):
    run_mod, _, _ = comfy
    engine_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.engine")
    schedule_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.schedule")
    lay = schedule_mod.make_layout("pixart", 1)
    bits = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0]], bool)
    run = run_mod.ComfyRun(engine_mod.CacheEngine(schedule_mod.Schedule(lay, bits, name="s")), label="s")
    seen = []

    def broken(entry):
        raise RuntimeError("listener bug")

    run.listeners += [broken, seen.append]
    run.placement = run_mod.Placement(run_mod.Slice(2, 2, 4), stage=2, ends_early=False)
    run.engine.begin_run(2, start=2, total=4)
    for step in range(2):
        run.engine.set_position(step)
    with caplog.at_level(logging.INFO, logger="ecad"):
        run._finish(0.5, None, torch.zeros(1, 4, 8, 16))
    (entry,) = seen
    assert entry is run.last_summary()
    assert entry["position"] == "steps 2\u20133 of 4 (stage 2 of a split run), schedule rows 2\u20133 of 4"
    assert (entry["stage"], entry["height"], entry["width"], entry["start"], entry["trajectory_steps"]) == (
        2,
        64,
        128,
        2,
        4,
    )
    # row 2 reuses 1 unit but is the run's first step: computed, and the log says why
    assert entry["first_step_reuses"] == 1 and "step 2 computed 1 unit(s) its row reuses" in entry["log"]
    assert "a run listener failed (RuntimeError: listener bug)" in caplog.text
