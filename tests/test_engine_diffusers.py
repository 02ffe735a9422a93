"""The cache engine on real diffusers PixArt-α/Σ and FLUX (tiny random weights)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from support import reference

from ecad_core import EcadError, ModelMismatchError, Schedule, apply, cached, load_schedule, make_layout
from ecad_core.diffusers.adapters import find_diffusers_units
from ecad_core.diffusers.tiny import tiny_flux_pipeline, tiny_pixart_pipeline
from ecad_core.engine import CacheEngine

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def _kw(pipe, steps=STEPS, **extra):
    if type(pipe).__name__.startswith("PixArt"):
        kw = dict(height=256, width=256, guidance_scale=4.5, clean_caption=False)
    else:
        kw = dict(height=128, width=128, guidance_scale=3.5, max_sequence_length=64)
    kw.update(prompt=["a red cat on a mat", "a blue dog"], num_inference_steps=steps, output_type="latent")
    kw.update(extra)
    return kw


def _run(pipe, seed=0, **extra):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**_kw(pipe, **extra), generator=torch.Generator().manual_seed(seed)).images


@pytest.fixture(scope="module", params=["pixart-alpha", "pixart-sigma", "flux-dev"])
def pipe(request):
    if request.param == "flux-dev":
        return tiny_flux_pipeline(double=2, single=3)
    return tiny_pixart_pipeline(request.param.split("-")[1], layers=3)


def _layout(pipe):
    return find_diffusers_units(pipe.transformer).layout


def _random_schedule(layout, steps, seed, p=0.5):
    rng = np.random.default_rng(seed)
    return Schedule(layout, rng.random((steps, layout.n_units)) < p, name=f"random-{seed}")


class ReferenceCache:
    """The simplest possible re-statement of ECAD's semantics, written independently of
    the engine: count transformer calls per timestep, keep each unit's last output."""

    def __init__(self, pipe, schedule):
        self.units = find_diffusers_units(pipe.transformer)
        self.bits = schedule.effective_bits()
        self.store, self.step, self.branch, self.last_t = {}, -1, 0, None
        self.handles = [pipe.transformer.register_forward_pre_hook(self._pre, with_kwargs=True)]
        for i, m in enumerate(self.units.modules):
            self.handles.append(m.register_forward_hook(self._post(i)))
            m.forward = self._make_forward(i, m, m.forward)
        self.mods = self.units.modules

    def _pre(self, mod, args, kwargs):
        t = float(kwargs["timestep"].reshape(-1)[0])
        if self.last_t is None or t > self.last_t:
            self.step, self.branch, self.store = 0, 0, {}
        elif t == self.last_t:
            self.branch += 1
        else:
            self.step, self.branch = self.step + 1, 0
        self.last_t = t

    def _make_forward(self, i, m, orig):
        def fwd(*a, **k):
            if self.step > 0 and not self.bits[self.step, i] and (i, self.branch) in self.store:
                return self.store[(i, self.branch)]
            return orig(*a, **k)

        return fwd

    def _post(self, i):
        def hook(mod, args, out):
            self.store[(i, self.branch)] = out

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        for m in self.mods:
            del m.forward


def test_all_recompute_is_bit_identical(pipe):
    ref = _run(pipe)
    with cached(pipe, Schedule.full(_layout(pipe), STEPS)) as h:
        out = _run(pipe)
        assert h.stats.total_reused == 0 and h.stats.total_computed == STEPS * _layout(pipe).n_units
    assert torch.equal(ref, out)


def test_reuse_schedule_matches_reference_semantics(pipe):
    sched = _random_schedule(_layout(pipe), STEPS, seed=3)
    ref_cache = ReferenceCache(pipe, sched)
    try:
        ref = _run(pipe)
    finally:
        ref_cache.remove()
    full = _run(pipe)
    with cached(pipe, sched) as h:
        out = _run(pipe)
        stats = h.stats
    assert torch.equal(ref, out)
    assert not torch.equal(full, out), "the reuse schedule changed nothing: the test would not catch a no-op"
    # skip statistics match the schedule exactly (one call per step: CFG batched)
    eff = sched.effective_bits()
    assert stats.computed.tolist() == eff.sum(1).tolist()
    assert stats.reused.tolist() == (~eff).sum(1).tolist()
    assert stats.fallback.sum() == 0


def test_consecutive_runs_identical_and_reset(pipe):
    sched = _random_schedule(_layout(pipe), STEPS, seed=5)
    with cached(pipe, sched) as h:
        a = _run(pipe)
        s1 = h.stats.as_dict()
        b = _run(pipe)
        s2 = h.stats.as_dict()
        # a different resolution / batch in the next run never reuses old tensors
        c = _run(
            pipe,
            prompt=["one prompt only"],
            **(
                {"height": 128, "width": 128, "use_resolution_binning": False}
                if "PixArt" in type(pipe).__name__
                else {"height": 64, "width": 64}
            ),
        )
        s3 = h.stats
    assert torch.equal(a, b) and s1 == s2
    assert s3.fallback.sum() == 0 and s3.total_reused == s1["reused"]
    assert c.shape[0] == 1


def test_remove_restores_model(pipe):
    ref = _run(pipe)
    h = apply(pipe, _random_schedule(_layout(pipe), STEPS, seed=1))
    _run(pipe)
    h.remove()
    units = find_diffusers_units(pipe.transformer)
    assert all("forward" not in m.__dict__ for m in units.modules)
    assert "set_timesteps" not in pipe.scheduler.__dict__
    assert not pipe.transformer._forward_pre_hooks
    assert torch.equal(_run(pipe), ref)


def test_separate_cfg_calls_keep_their_own_cache():
    """cond and uncond in two calls per step == one CFG batch, unit by unit."""
    pipe = tiny_pixart_pipeline("alpha", layers=3)
    tr = pipe.transformer
    layout = _layout(pipe)
    sched = _random_schedule(layout, 5, seed=11)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 32, 32)
    ctx = torch.randn(2, 10, 32)
    ts = [999, 800, 600, 400, 200]

    def run(split):
        outs = []
        with cached(tr, sched) as h:
            for t in ts:
                tt = torch.tensor([t, t])
                if split:
                    o = torch.cat(
                        [
                            tr(
                                x[i : i + 1],
                                encoder_hidden_states=ctx[i : i + 1],
                                timestep=tt[i : i + 1],
                                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                            ).sample
                            for i in range(2)
                        ]
                    )
                else:
                    o = tr(
                        x,
                        encoder_hidden_states=ctx,
                        timestep=tt,
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                    ).sample
                outs.append(o)
            stats = h.stats
        return torch.stack(outs), stats

    with torch.no_grad():
        joint, sj = run(False)
        split, ss = run(True)
    torch.testing.assert_close(split, joint, rtol=1e-5, atol=1e-5)
    assert ss.total_reused == 2 * sj.total_reused and ss.calls == 2 * sj.calls == 10


def test_shape_change_inside_a_run_never_reuses():
    lay = make_layout("pixart", 1)
    eng = CacheEngine(Schedule(lay, np.array([[1, 1, 1], [0, 0, 0]], bool)))
    eng.begin_run()
    f = lambda x: x * 2
    eng.set_position(0)
    eng.call(0, f, (torch.ones(2, 3),), {})
    eng.set_position(1)
    out = eng.call(0, f, (torch.ones(4, 3),), {})  # batch changed: must compute
    assert out.shape == (4, 3)
    assert eng.stats.fallback[1] == 1 and eng.stats.reused[1] == 0
    out2 = eng.call(0, f, (torch.ones(4, 3),), {})  # now a valid entry exists
    assert eng.stats.reused[1] == 1 and out2.shape == (4, 3)
    eng.end_run()
    assert eng.cache_bytes() == 0 and eng.last_stats.cache_bytes > 0


def test_outputs_are_kept_only_while_a_later_call_can_reuse_them():
    lay = make_layout("pixart", 1)  # 3 units
    bits = np.array(
        [
            [1, 1, 1],
            [0, 1, 1],  # unit 0 reused at step 1
            [1, 1, 0],  # unit 2 reused at step 2
            [1, 1, 1],
        ],
        bool,
    )
    f = lambda x: x + 1
    x = torch.ones(2, 3)

    def step(eng, s, units=range(3)):
        eng.set_position(s)
        for u in units:
            eng.call(u, f, (x,), {})
        return {u for (u, _b) in eng._store}

    eng = CacheEngine(Schedule(lay, bits))
    eng.begin_run()
    assert step(eng, 0) == {0}  # only unit 0 is reused next step
    assert step(eng, 1) == {0, 2}  # unit 0 stays stored (a second call of this step may reuse it)
    assert step(eng, 2) == {2}
    assert step(eng, 3) == set() and eng.cache_bytes() == 0
    st = eng.end_run()
    assert st.reused.tolist() == [0, 1, 1, 0] and st.fallback.sum() == 0 and st.computed.sum() == 10

    # all recompute stores nothing at all (no memory, no bookkeeping beyond the counters)
    full = CacheEngine(Schedule.full(lay, 4))
    full.begin_run()
    for s in range(4):
        assert step(full, s) == set()
    assert full.end_run().total_computed == 12

    # a step whose model call never happens (e.g. skipped by a sampler) never leaves a stale output behind:
    # unit 2 computed at step 1 was not kept (step 2 recomputes); with step 2 skipped, step 3 finds nothing
    b2 = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
    eng = CacheEngine(Schedule(lay, b2))
    eng.begin_run()
    step(eng, 0)
    step(eng, 1)
    step(eng, 3)
    st = eng.end_run()
    assert st.fallback[3] == 1 and st.reused.sum() == 0

    # a fallback compute at a reuse step is kept for the step's next call (Heun's second evaluation)
    eng = CacheEngine(Schedule(lay, bits))
    eng.begin_run()
    step(eng, 0)
    eng.set_position(1)
    eng.call(0, f, (torch.ones(4, 3),), {})  # batch changed: fallback
    eng.call(0, f, (torch.ones(4, 3),), {})  # same step again: reuses that output
    st = eng.end_run()
    assert st.fallback[1] == 1 and st.reused[1] == 1


def test_offload_to_cpu_gives_same_output_and_reports_memory():
    pipe = tiny_pixart_pipeline("alpha", layers=3)
    sched = _random_schedule(_layout(pipe), STEPS, seed=2)
    with cached(pipe, sched) as h:
        a = _run(pipe)
        mem = h.cache_bytes()
    with cached(pipe, sched, offload_device="cpu") as h:
        b = _run(pipe)
    assert torch.equal(a, b)
    assert mem > 0


def test_wrong_family_or_block_count_is_refused():
    pipe = tiny_pixart_pipeline("alpha", layers=3)
    flux = load_schedule(REPO / "schedules/flux-dev-256-fast.json")
    with pytest.raises(ModelMismatchError, match="flux-dev-256-fast"):
        apply(pipe, flux)
    with pytest.raises(ModelMismatchError, match="28 main blocks"):
        apply(pipe, REPO / "schedules/pixart-alpha-256-fast.json")
    with pytest.raises(ModelMismatchError, match="no diffusers adapter"):
        apply(torch.nn.Linear(2, 2), Schedule.full(make_layout("pixart", 1), 2))
    # nothing was left attached by the failed attempts
    assert all("forward" not in m.__dict__ for m in find_diffusers_units(pipe.transformer).modules)


def test_too_many_steps_on_a_bare_transformer_is_a_clear_error():
    pipe = tiny_pixart_pipeline("alpha", layers=2)
    tr = pipe.transformer
    sched = Schedule.full(_layout(pipe), 2)
    x, ctx = torch.randn(1, 4, 32, 32), torch.randn(1, 5, 32)
    with cached(tr, sched), torch.no_grad():
        for t in (900, 500):
            tr(
                x,
                encoder_hidden_states=ctx,
                timestep=torch.tensor([t]),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            )
        with pytest.raises(EcadError, match="sampling step 3.*covers 2 steps"):
            tr(
                x,
                encoder_hidden_states=ctx,
                timestep=torch.tensor([100]),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            )


def test_pipeline_step_count_is_remapped():
    pipe = tiny_pixart_pipeline("alpha", layers=2)
    sched = Schedule.every_n(_layout(pipe), 4, 2)
    with cached(pipe, sched) as h:
        _run(pipe, steps=8)
        st = h.stats
    assert st.steps == 8 and st.remapped_from == 4
    # each of the 4 rows over the 2 steps of its share: the recompute fraction is kept
    assert st.computed.tolist() == [6, 6, 0, 0, 6, 6, 0, 0]


@pytest.fixture(scope="module")
def full_depth():
    return {"pixart": tiny_pixart_pipeline("alpha", layers=28), "flux": tiny_flux_pipeline(double=19, single=38)}


@pytest.mark.parametrize("path", reference.params("*/*.json", reference.PAPER, lambda p: f"{p.parent.name}/{p.stem}"))
def test_every_paper_schedule_runs_on_matching_structure(full_depth, path):
    s = load_schedule(path)
    pipe = full_depth[s.family]
    with cached(pipe, s) as h:
        out = _run(
            pipe,
            steps=s.steps,
            prompt=["a lighthouse at dusk"],
            **(
                {"height": 64, "width": 64}
                if s.family == "flux"
                else {"height": 64, "width": 64, "use_resolution_binning": False}
            ),
        )
        st = h.stats
    assert torch.isfinite(out).all()
    eff = s.effective_bits()
    assert st.computed.tolist() == eff.sum(1).tolist()
    assert st.reused.tolist() == (~eff).sum(1).tolist()


def test_img2img_reads_the_rows_of_its_part_of_the_trajectory():
    # strength 0.5 over 8 steps runs steps 4-7 of 8: rows 2, 2, 3, 3 of a 4-step schedule (the rule of
    # ecad_core.schedule.remap). Before, the schedule's rows were spread keeping their count, so steps holding
    # no row reused everything: all-recompute changed the image.
    from diffusers import FluxImg2ImgPipeline

    pipe = FluxImg2ImgPipeline(**tiny_flux_pipeline().components)
    pipe.set_progress_bar_config(disable=True)
    lay = _layout(pipe)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def run():
        return pipe(
            prompt="a lighthouse",
            image=image,
            strength=0.5,
            num_inference_steps=8,
            height=64,
            width=64,
            guidance_scale=1.0,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).images

    ref = run()
    with cached(pipe, Schedule.full(lay, 4)) as h:
        full = run()
        st = h.stats
    assert torch.equal(full, ref) and st.total_reused == 0
    assert (st.start, st.trajectory, st.rows) == (4, 8, (2, 3))
    bits = np.zeros((4, lay.n_units), bool)
    bits[0] = bits[2, ::2] = bits[3, 1::2] = True
    with cached(pipe, Schedule(lay, bits)) as h:
        run()
        st = h.stats
    n2, n3 = int(bits[2].sum()), int(bits[3].sum())
    assert st.computed.tolist() == [lay.n_units, n2, n3, n3]
    assert st.position() == "steps 4\u20137 of 8, schedule rows 2\u20133 of 4"
