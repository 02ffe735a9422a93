"""Step-0 sharing between a search's runs (ecad_core/engine/step0.py): a run served by the memo skips its step-0
transformer call and gives the same output, bit for bit, with the same statistics (tiny diffusers PixArt and FLUX,
the trained shapes model of the search benchmark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecad_core.cli.search import SampleSubsets
from ecad_core.diffusers.api import apply
from ecad_core.diffusers.generate import diffusers_generate_fn
from ecad_core.engine import Step0Memo, unit_timing
from ecad_core.engine.probe import record_unit_changes
from ecad_core.schedule import Schedule, make_layout
from ecad_core.search import LocalEvaluator

STEPS = 5
PROMPTS = ["a red cat on a mat", "a blue dog"]


def _mixed(layout, steps: int, seed: int) -> Schedule:
    bits = np.random.default_rng(seed).random((steps, layout.n_units)) < 0.5
    bits[0] = True
    return Schedule(layout, bits, name=f"mixed{seed}")


def _schedules(layout, steps: int) -> list[Schedule]:
    # every-2 and the mixed ones reuse units at step 1 (those come from the memo in a served run)
    return [
        Schedule.full(layout, steps),
        Schedule.every_n(layout, steps, 2),
        _mixed(layout, steps, 1),
        Schedule.every_n(layout, steps, 3),
        _mixed(layout, steps, 2),
    ]


class _Forwards:
    """Counts the transformer's forward bodies that ran (a submodule every forward calls once)."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


@pytest.fixture(scope="module")
def pixart():
    from ecad_core.diffusers.tiny import tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline("alpha", layers=2)
    pipe.set_progress_bar_config(disable=True)
    return pipe, make_layout("pixart", 2), _Forwards(pipe.transformer.pos_embed)


@pytest.fixture(scope="module")
def flux():
    from ecad_core.diffusers.tiny import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(double=1, single=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe, make_layout("flux", 1, 1), _Forwards(pipe.transformer.x_embedder)


def _stats(gen) -> list[dict]:
    return [s.as_dict() for s in gen.last_stats]


@pytest.mark.parametrize("model", ["pixart", "flux"])
def test_served_runs_equal_unshared_runs_bit_for_bit(model, request):
    pipe, layout, forwards = request.getfixturevalue(model)
    cfg = 4.5 if model == "pixart" else 3.5
    shared = diffusers_generate_fn(pipe, PROMPTS, [0, 1], STEPS, cfg, 64, 64, step0_memo=True)
    plain = diffusers_generate_fn(pipe, PROMPTS, [0, 1], STEPS, cfg, 64, 64)
    assert plain.step0_memo is None
    memo = shared.step0_memo
    calls = len(shared.seeds)  # pipeline calls per run (one prompt chunk per seed): one step-0 call each
    for i, sched in enumerate(_schedules(layout, STEPS)):
        forwards.n = 0
        got = shared(sched)
        served = forwards.n
        forwards.n = 0
        want = plain(sched)
        assert forwards.n == STEPS * calls
        # the first run records each call's step 0, every later one is served: steps - 1 forwards per call
        assert served == (STEPS if i == 0 else STEPS - 1) * calls, (i, served)
        assert memo.shared == i * calls and memo.recorded == calls and len(memo) == calls
        assert all(torch.equal(a, b) for a, b in zip(got, want)), sched.name
        # the statistics are those of the unshared run: step 0 counted computed, the same reuses and fallbacks
        assert _stats(shared) == _stats(plain), sched.name
        for st in shared.last_stats:
            assert st.computed[0] == layout.n_units * st.calls // STEPS and st.reused[0] == 0
    assert memo.nbytes > 0


def test_a_run_with_other_inputs_misses_and_is_recorded(pixart):
    pipe, layout, forwards = pixart
    shared = SampleSubsets(diffusers_generate_fn(pipe, PROMPTS, [0, 1], 4, 4.5, 64, 64, step0_memo=True))
    plain = SampleSubsets(diffusers_generate_fn(pipe, PROMPTS, [0, 1], 4, 4.5, 64, 64))
    memo = shared.step0_memo
    e2, e3 = Schedule.every_n(layout, 4, 2), _mixed(layout, 4, 3)
    assert all(torch.equal(a, b) for a, b in zip(shared(e2), plain(e2)))
    assert (memo.shared, memo.recorded) == (0, 2)
    # racing's subset: one sample per seed, another batch than the full run's: computed, exact, recorded
    forwards.n = 0
    sub = shared(e3, samples=[3, 0])
    assert forwards.n == 2 * 4 and (memo.shared, memo.recorded) == (0, 4)
    assert all(torch.equal(a, b) for a, b in zip(sub, plain(e3, samples=[3, 0])))
    # another seed's noise with the same shapes: a miss too
    forwards.n = 0
    other = diffusers_generate_fn(pipe, PROMPTS, [7], 4, 4.5, 64, 64, step0_memo=True)
    other.step0_memo = memo
    out = other(e2)
    assert forwards.n == 4 and memo.shared == 0
    plain_other = diffusers_generate_fn(pipe, PROMPTS, [7], 4, 4.5, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(out, plain_other(e2)))
    # the same subset again: served
    forwards.n = 0
    again = shared(e2, samples=[3, 0])
    assert forwards.n == 2 * 3 and memo.shared == 2
    assert all(torch.equal(a, b) for a, b in zip(again, plain(e2, samples=[3, 0])))


def test_local_evaluator_losses_are_unchanged(pixart):
    pipe, layout, _ = pixart
    scheds = _schedules(layout, 4)
    shared = diffusers_generate_fn(pipe, PROMPTS, [0, 1], 4, 4.5, 64, 64, step0_memo=True)
    plain = diffusers_generate_fn(pipe, PROMPTS, [0, 1], 4, 4.5, 64, 64)
    ev_shared, ev_plain = LocalEvaluator(shared), LocalEvaluator(plain)
    losses = ev_shared.evaluate(scheds[:2])
    per_sample = ev_shared.last_sample_losses
    losses += ev_shared.evaluate(scheds[2:])
    per_sample += ev_shared.last_sample_losses
    assert losses == ev_plain.evaluate(scheds) and losses[1] > 0
    assert per_sample == ev_plain.last_sample_losses
    assert shared.step0_memo.shared == (len(scheds) - 1) * 2


def test_unit_timers_and_the_probe_see_every_step0_unit(pixart):
    # a timer (the latency objective) or the unit probe must see the units run: the memo stands aside
    pipe, layout, forwards = pixart
    gen = diffusers_generate_fn(pipe, PROMPTS[:1], [0], 3, 4.5, 64, 64, step0_memo=True)
    gen(Schedule.every_n(layout, 3, 2))
    assert gen.step0_memo.recorded == 1
    timed = []
    forwards.n = 0
    with unit_timing(lambda unit, compute: (timed.append(unit), compute())[1]):
        gen(Schedule.full(layout, 3))
    assert forwards.n == 3 and len(timed) == 3 * layout.n_units and gen.step0_memo.shared == 0
    plain = diffusers_generate_fn(pipe, PROMPTS[:1], [0], 3, 4.5, 64, 64)
    table = record_unit_changes(gen, layout, 3)
    assert np.array_equal(table, record_unit_changes(plain, layout, 3)) and gen.step0_memo.shared == 0


def test_apply_restores_the_forward_and_refuses_graphs(pixart):
    pipe, layout, _ = pixart
    t = pipe.transformer
    assert "forward" not in t.__dict__
    with pytest.raises(ValueError, match="step0_memo and cuda_graphs"):
        apply(pipe, Schedule.full(layout, 3), step0_memo=Step0Memo(), cuda_graphs=True)
    h = apply(pipe, Schedule.full(layout, 3), step0_memo=Step0Memo())
    assert "forward" in t.__dict__
    h.remove()
    assert "forward" not in t.__dict__
    # off: every step-0 call runs the model
    memo = Step0Memo(enabled=False)
    for _ in range(2):
        with apply(pipe, Schedule.every_n(layout, 3, 2), step0_memo=memo):
            pipe("a cat", num_inference_steps=3, height=64, width=64, output_type="latent")
    assert (memo.shared, memo.recorded, len(memo)) == (0, 0, 0)
    # a byte cap: nothing recorded past it, every run computes
    memo = Step0Memo(max_bytes=1)
    for _ in range(2):
        with apply(pipe, Schedule.every_n(layout, 3, 2), step0_memo=memo):
            pipe("a cat", num_inference_steps=3, height=64, width=64, output_type="latent")
    assert (memo.shared, memo.recorded, memo.computed) == (0, 0, 2)
    # once an entry did not fit, no later call copies its outputs for nothing
    assert memo.full

    def no_record(*a, **k):
        raise AssertionError("recorded after the memo was full")

    memo._record = no_record
    with apply(pipe, Schedule.every_n(layout, 3, 2), step0_memo=memo):
        pipe("a dog", num_inference_steps=3, height=64, width=64, output_type="latent")
    assert memo.computed == 3
    # a search's memo: a quarter of a CUDA device's memory, 4 GiB elsewhere
    assert Step0Memo.for_search("cpu").max_bytes == 4 * 2**30


def test_shapes_generate_shares_step0():
    from bench import trained
    from bench.bench_search_efficiency import ShapesGenerate
    from bench.rule_caches import POLICIES

    torch.set_num_threads(1)
    model = trained.load("pixart")
    steps = 4
    shared = ShapesGenerate(model, "pixart", trained.CALIBRATION[:2], [0, 1], steps)
    plain = ShapesGenerate(model, "pixart", trained.CALIBRATION[:2], [0, 1], steps, step0_memo=False)
    layout = shared.units.layout
    forwards = _Forwards(model.pos_embed)
    for i, sched in enumerate(_schedules(layout, steps)[:3]):
        forwards.n = 0
        got = shared(sched)
        assert forwards.n == (steps if i == 0 else steps - 1)
        assert all(torch.equal(a, b) for a, b in zip(got, plain(sched)))
        assert shared.step0_shared == i
    assert plain.step0_shared == 0
    # a subset (racing): recorded apart, exact
    e2 = Schedule.every_n(layout, steps, 2)
    assert all(torch.equal(a, b) for a, b in zip(shared(e2, samples=[1, 2]), plain(e2, samples=[1, 2])))
    assert shared.step0_shared == 2
    # a rule-based policy watches step 0: it never uses the memo
    shared.policy = POLICIES["fbcache"](0.15)
    forwards.n = 0
    shared(Schedule.full(layout, steps))
    assert forwards.n == steps and shared.step0_shared == 2


def _split_cfg_run(transformer, handle_fn, steps: int = 3):
    """A sampling loop calling the transformer twice per step (cond, then uncond), as split CFG does."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(1, 6, 32, generator=g), torch.zeros(1, 6, 32)  # the tiny model: captions 32 wide
    kw = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}, "return_dict": False}
    with handle_fn() as h, torch.no_grad():
        for i in range(steps):
            t = torch.full((1,), 900.0 - 300 * i)
            c = transformer(x, encoder_hidden_states=cond, timestep=t, **kw)[0]
            u = transformer(x, encoder_hidden_states=uncond, timestep=t, **kw)[0]
            eps = (u + 2.0 * (c - u))[:, :4]
            x = x - 0.2 * eps
        stats = h.finish_run().as_dict()
    return x, stats


@pytest.mark.parametrize("offload", [None, "cpu"])
def test_split_cfg_branches_and_offload(pixart, offload):
    pipe, layout, forwards = pixart
    t = pipe.transformer
    memo = Step0Memo()
    runs = []
    for sched in _schedules(layout, 3):
        forwards.n = 0
        got = _split_cfg_run(t, lambda s=sched: apply(t, s, step0_memo=memo, offload_device=offload))
        served = forwards.n
        want = _split_cfg_run(t, lambda s=sched: apply(t, s, offload_device=offload))
        assert torch.equal(got[0], want[0]) and got[1] == want[1], sched.name
        runs.append(served)
    # each branch's step-0 call is its own entry: both served from the second run on
    assert runs == [6] + [4] * (len(runs) - 1) and memo.shared == 2 * (len(runs) - 1) and len(memo) == 2
