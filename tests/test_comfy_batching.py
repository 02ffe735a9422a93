"""The Evolve node's calibration samples batched into one ComfyUI sampler call (issue #19 B.1), in-process on
ComfyUI's own loader and sampler: the same outputs as one call per sample, up to the model's batch invariance."""

from __future__ import annotations

import importlib

import pytest
import torch

from comfy_harness import inprocess

pytestmark = pytest.mark.comfy
# float32 on the CPU: batched matmuls may round differently from batch-1 ones
RTOL = 1e-4


@pytest.fixture(scope="module")
def env(comfy_dir, comfy_models):
    sampling, schedule = inprocess.sampling_modules()
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(comfy_models["ecad_tiny_pixart_alpha"]))
    return sampling, schedule, model


def _cond(seed, tokens=8):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=g), {"pooled_output": None}]]


def _samples(sampling, tokens=(8, 8, 8)):
    neg = [[torch.zeros(1, 8, 4096), {"pooled_output": None}]]
    return [sampling.Sample(_cond(i, t), neg, seed=100 + i) for i, t in enumerate(tokens)]


def _settings(sampling, sampler="euler"):
    return sampling.SamplerSettings(steps=3, cfg=2.0, sampler_name=sampler, scheduler="normal", width=512, height=32)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_batched_calibration_equals_one_call_per_sample(env, monkeypatch):
    sampling, schedule, model = env
    import comfy.sample

    calls = []
    real = comfy.sample.sample

    def counting(model, noise, *a, **k):
        calls.append(noise.shape[0])
        return real(model, noise, *a, **k)

    monkeypatch.setattr(comfy.sample, "sample", counting)
    samples = _samples(sampling)
    one = sampling.Sampler(model, _settings(sampling), samples)
    batched = sampling.Sampler(model, _settings(sampling), samples, batch_size=32)
    assert one.batch_groups() == [[0], [1], [2]] and batched.batch_groups() == [[0, 1, 2]]
    from comfyui_ecad_bench.nodes.adapters import adapter_for

    lay = adapter_for(model).layout
    sched = schedule.Schedule.every_n(lay, 3, 2)
    for s in (None, sched):
        calls.clear()
        ref = one(s)
        assert calls == [1, 1, 1]
        calls.clear()
        out = batched(s)
        assert calls == [3]
        assert len(out) == 3 and all(o.shape == r.shape for o, r in zip(out, ref))
        for o, r in zip(out, ref):
            assert _rel(o, r) < RTOL
        # each sample keeps its own seed's noise and prompt: the outputs differ from each other
        assert _rel(out[0], out[1]) > 0.01
    # the cache really ran batched: every-2 reuses, so it differs from full compute
    assert _rel(batched(sched)[0], batched(None)[0]) > 1e-4


def test_conditionings_that_cannot_be_stacked_are_sampled_apart(env):
    sampling, _, model = env
    samples = _samples(sampling, tokens=(8, 8, 12, 8))  # prompt 2 has another length
    gen = sampling.Sampler(model, _settings(sampling), samples, batch_size=2)
    assert gen.batch_groups() == [[0, 1], [2], [3]]
    hooked = _samples(sampling)
    hooked[1].positive[0][1]["hooks"] = object()  # another node's hooks: never stacked
    assert sampling.Sampler(model, _settings(sampling), hooked, batch_size=8).batch_groups() == [[0], [1], [2]]
    outs = gen(None)
    ref = sampling.Sampler(model, _settings(sampling), samples)(None)
    assert all(_rel(o, r) < RTOL for o, r in zip(outs, ref))


def test_samples_per_call_fits_comfys_memory_estimate(env):
    _, _, model = env
    evolve_node = importlib.import_module("comfyui_ecad_bench.nodes.evolve_node")
    spc, cap = evolve_node.samples_per_call, evolve_node.SAMPLES_PER_CALL
    shape = (1, 4, 64, 64)
    per = model.model.memory_required([2, *shape[1:]])  # ComfyUI's own estimate: one sample with its CFG pair
    weights = model.model_size()
    assert spc(model, shape) == cap  # on the CPU
    assert spc(model, shape, total_memory=2 * (weights + 5.5 * per)) == 5
    assert spc(model, shape, total_memory=2 * weights) == 1  # no room: one at a time, never 0
    assert spc(model, shape, total_memory=1e15) == cap
