"""Step-0 sharing on the ComfyUI path (the Evolve node's ``Sampler``, ``step0_memo``), in-process on ComfyUI's own
loader and sampler: runs served by the memo skip the step-0 model call and equal unshared runs bit for bit."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from comfy_harness import inprocess

pytestmark = pytest.mark.comfy
STEPS = 4


@pytest.fixture(scope="module")
def env(comfy_dir, comfy_models):
    sampling, schedule = inprocess.sampling_modules()
    import comfy.sd

    adapters = importlib.import_module("comfyui_ecad_bench.nodes.adapters")
    return sampling, schedule, adapters, comfy.sd, comfy_models


def _samples(sampling, dim: int = 4096, pooled: int | None = None):
    # PixArt: T5 tokens 4096 wide; the tiny FLUX: context 64, pooled vector 32
    def extra(g):
        return {"pooled_output": None if pooled is None else torch.randn(1, pooled, generator=g)}

    neg = [[torch.zeros(1, 8, dim), extra(torch.Generator().manual_seed(99))]]
    out = []
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        out.append(sampling.Sample([[torch.randn(1, 8, dim, generator=g), extra(g)]], neg, 100 + i))
    return out


def _schedules(schedule, layout) -> list:
    rng = np.random.default_rng(0)
    mixed = rng.random((STEPS, layout.n_units)) < 0.5
    mixed[0] = True
    return [
        schedule.Schedule.full(layout, STEPS),
        schedule.Schedule.every_n(layout, STEPS, 2),  # reuses every unit at step 1: from the memo when served
        schedule.Schedule(layout, mixed, name="mixed"),
        schedule.Schedule.every_n(layout, STEPS, 3),
    ]


def _history(gen) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("seconds", "log")} for e in gen._last_run]  # not timings


@pytest.mark.parametrize("name", ["ecad_tiny_pixart_alpha", "ecad_tiny_flux_dev"])
def test_served_runs_equal_unshared_runs_bit_for_bit(env, name):
    sampling, schedule, adapters, comfy_sd, models = env
    model = comfy_sd.load_diffusion_model(str(models[name]), model_options={"dtype": torch.float32})
    dm = model.model.diffusion_model
    forwards = [0]
    dm.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    layout = adapters.adapter_for(model).layout
    pixart = "pixart" in name
    settings = sampling.SamplerSettings(STEPS, 2.0, "euler", "normal", 512 if pixart else 64, 32)
    samples = _samples(sampling) if pixart else _samples(sampling, 64, 32)
    shared = sampling.Sampler(model, settings, samples, batch_size=2, step0_memo=True)
    plain = sampling.Sampler(model, settings, samples, batch_size=2)
    assert plain.step0_memo is None
    groups = len(shared.batch_groups())
    assert groups == 2  # two sampler calls per run: [0, 1] and [2]
    memo = shared.step0_memo
    for i, sched in enumerate(_schedules(schedule, layout)):
        forwards[0] = 0
        got = shared(sched)
        served = forwards[0]
        forwards[0] = 0
        want = plain(sched)
        calls_per_run = forwards[0]  # model calls of an unshared run: one per step per sampler call (CFG batched)
        assert calls_per_run == STEPS * groups
        assert served == calls_per_run - (groups if i else 0), (i, served)
        assert memo.shared == i * groups and memo.recorded == groups
        assert all(torch.equal(a, b) for a, b in zip(got, want)), sched.name
        # the statistics are the unshared run's (step 0 counted computed, the same reuses)
        assert _history(shared) == _history(plain), sched.name
    # the reference (no schedule) runs the model as it is
    forwards[0] = 0
    shared(None)
    assert forwards[0] == STEPS * groups and memo.shared == 3 * groups


def test_a_run_with_other_inputs_misses_and_is_exact(env):
    sampling, schedule, adapters, comfy_sd, models = env
    model = comfy_sd.load_diffusion_model(str(models["ecad_tiny_pixart_alpha"]), model_options={"dtype": torch.float32})
    layout = adapters.adapter_for(model).layout
    settings = sampling.SamplerSettings(STEPS, 2.0, "euler", "normal", 512, 32)
    samples = _samples(sampling)
    e2 = schedule.Schedule.every_n(layout, STEPS, 2)
    shared = sampling.Sampler(model, settings, samples, batch_size=2, step0_memo=True)
    shared(e2)
    # the same memo on other samples (another seed: the same shapes, other noise): computed, recorded, exact
    moved = [sampling.Sample(s.positive, s.negative, s.seed + 50) for s in samples]
    other = sampling.Sampler(model, settings, moved, batch_size=2)
    other.step0_memo = shared.step0_memo
    got = other(schedule.Schedule.every_n(layout, STEPS, 3))
    plain = sampling.Sampler(model, settings, moved, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(got, plain(schedule.Schedule.every_n(layout, STEPS, 3))))
    assert (shared.step0_memo.shared, shared.step0_memo.recorded) == (0, 4)
