"""The zero-overhead ceiling (bench/ceiling.py) replays a schedule with the engine's unit structure and no
bookkeeping: its images equal the engine's bit for bit on both paths (PixArt, FLUX.1; tiny models, the shipped
presets), and the engine's cache never holds more than the ceiling's, which keeps one output per unit that the
next step reuses (issue #21's memory target, measured with ``CacheEngine.cache_bytes``)."""

from __future__ import annotations

import pytest
import torch

from bench import bench_comfy, models
from bench.ceiling import ceiling_for
from bench.common import SCHEDULES, replay_bits
from ecad_core import load_schedule, remap_steps
from ecad_core.diffusers.api import apply

STEPS = 8
CASES = [
    ("alpha", "pixart-alpha-256-fast"),
    ("alpha", "pixart-alpha-256-fastest"),
    ("flux", "flux-dev-1024-fast"),
    ("flux", "flux-dev-256-faster"),
]


def _nbytes(v) -> int:
    if isinstance(v, torch.Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, (tuple, list)):
        return sum(_nbytes(x) for x in v)
    return 0


@pytest.fixture(scope="module")
def diffusers_models():
    with torch.no_grad():
        return {
            "alpha": models.diffusers_pixart("alpha", 64, tiny=True, device="cpu", dtype=torch.float32, steps=STEPS),
            "flux": models.diffusers_flux(32, tiny=True, device="cpu", dtype=torch.float32, steps=STEPS),
        }


def _ceiling_loop(den, bits):
    """The ceiling's image and the bytes it holds after each step."""
    held = []
    with torch.no_grad(), ceiling_for(den.model, bits) as c:

        def pre(i):
            if i:
                held.append(_nbytes(c.out))
            c.step = i

        x = den.loop(pre)
        held.append(_nbytes(c.out))
    return x, held


def _diffusers_engine_loop(den, sched):
    held = []
    with torch.no_grad():
        h = apply(den.model, sched)
        h.tracker.step_hooked = True
        try:

            def pre(i):
                if i == 0:
                    h.tracker.scheduler_set(den.timesteps)
                else:
                    held.append(h.engine.cache_bytes())
                    h.tracker.scheduler_stepped()

            x = den.loop(pre)
            held.append(h.engine.cache_bytes())
        finally:
            h.remove()
    return x, held


@pytest.mark.parametrize("model,preset", CASES)
def test_ceiling_equals_engine_diffusers(diffusers_models, model, preset):
    den = diffusers_models[model]
    sched = remap_steps(load_schedule(SCHEDULES / f"{preset}.json"), STEPS)
    with torch.no_grad():
        ref = den.loop()
    a, engine_held = _diffusers_engine_loop(den, sched)
    b, ceiling_held = _ceiling_loop(den, replay_bits(sched, STEPS))
    assert torch.equal(a, b)
    assert not torch.equal(a, ref)  # the schedule skipped work
    assert max(ceiling_held) > 0
    assert all(e <= c for e, c in zip(engine_held, ceiling_held, strict=True)), (engine_held, ceiling_held)


def test_all_recompute_stores_nothing_diffusers(diffusers_models):
    from ecad_core import Schedule
    from ecad_core.diffusers.adapters import find_diffusers_units

    for den in diffusers_models.values():
        full = Schedule.full(find_diffusers_units(den.model).layout, STEPS)
        _, held = _diffusers_engine_loop(den, full)
        assert held == [0] * STEPS


# -- ComfyUI: its own PixArtMS and Flux, the pack's adapters installed as the Apply node installs them ---------


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    bench_comfy.import_comfy("cpu")
    adapters, engine_mod, schedule_mod = bench_comfy.pack_modules()
    with torch.no_grad():
        dens = {
            "alpha": bench_comfy.comfy_pixart("alpha", 384, tiny=True, device="cpu", dtype=torch.float32, steps=STEPS),
            "flux": bench_comfy.comfy_flux(32, tiny=True, device="cpu", dtype=torch.float32, steps=STEPS),
        }
    return dens, adapters, engine_mod, schedule_mod


class _Run:  # what the adapters' hooks read
    def __init__(self, engine):
        self.engine, self.capture = engine, None
        self.first_eval_checks, self.pre_run_checks = [], []


def _comfy_engine_loop(den, sched, adapters, engine_mod):
    held = []
    eng = engine_mod.CacheEngine(sched)
    options = getattr(den, "transformer_options", {})
    mp = bench_comfy.Patcher(den.model, options)
    adapters.adapter_of(den.model).install(mp, _Run(eng))

    def pre(i):
        if i == 0:
            eng.begin_run(STEPS)
        else:
            held.append(eng.cache_bytes())
        eng.set_position(i, ("cond", "uncond"))

    try:
        with torch.no_grad():
            x = den.loop(pre)
        held.append(eng.cache_bytes())
        eng.end_run()
    finally:
        mp.unpatch()
    return x, held


def _comfy_ceiling_loop(den, bits):
    options = getattr(den, "transformer_options", None)
    if options is None:
        return _ceiling_loop(den, bits)
    held = []
    with torch.no_grad(), ceiling_for(den.model, bits) as c:
        options["patches_replace"] = {"dit": c.patches}
        try:

            def pre(i):
                if i:
                    held.append(_nbytes(c.out))
                c.step = i

            x = den.loop(pre)
            held.append(_nbytes(c.out))
        finally:
            options["patches_replace"] = {}
    return x, held


@pytest.mark.comfy
@pytest.mark.parametrize("model,preset", CASES)
def test_ceiling_equals_pack_comfy(comfy, model, preset):
    dens, adapters, engine_mod, schedule_mod = comfy
    den = dens[model]
    sched = schedule_mod.remap_steps(schedule_mod.load_schedule(SCHEDULES / f"{preset}.json"), STEPS)
    with torch.no_grad():
        ref = den.loop()
    a, engine_held = _comfy_engine_loop(den, sched, adapters, engine_mod)
    b, ceiling_held = _comfy_ceiling_loop(den, sched.effective_bits())
    assert torch.equal(a, b)
    assert not torch.equal(a, ref)
    assert max(ceiling_held) > 0
    assert all(e <= c for e, c in zip(engine_held, ceiling_held, strict=True)), (engine_held, ceiling_held)


@pytest.mark.comfy
def test_all_recompute_stores_nothing_comfy(comfy):
    dens, adapters, engine_mod, schedule_mod = comfy
    for den in dens.values():
        full = schedule_mod.Schedule.full(adapters.adapter_of(den.model).layout, STEPS)
        _, held = _comfy_engine_loop(den, full, adapters, engine_mod)
        assert held == [0] * STEPS


def test_ceiling_refuses_bits_of_another_layout(diffusers_models):
    import numpy as np

    with pytest.raises(ValueError, match=r"bits must be \[steps, 84\]"):
        ceiling_for(diffusers_models["alpha"].model, np.ones((STEPS, 83), bool))
    assert "forward" not in diffusers_models["alpha"].model.transformer_blocks[0].__dict__
