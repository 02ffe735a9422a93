"""Performance paths, checked for correctness (not timed): the zero-overhead ceiling cache, the engine's
sync-free step tracking and in-place store, the CUDA-graph mode's CPU fallback, and the benches' CPU smoke runs."""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest
import torch

from bench import bench_comfy, bench_diffusers, bench_search, gpu_suite, models
from bench.ceiling import CeilingCache
from bench.common import SCHEDULES
from ecad_core import Schedule, cached, load_schedule, make_layout
from ecad_core.diffusers import api as diffusers_api
from ecad_core.diffusers.adapters import find_diffusers_units
from ecad_core.diffusers.tiny import tiny_flux_pipeline, tiny_pixart_pipeline
from ecad_core.engine import CacheEngine
from ecad_core.engine.cuda_graphs import GraphMode, unsupported_reason


@pytest.fixture(scope="module")
def alpha():
    # 28 tiny blocks at 64² (16 tokens): the shipped 28-block presets fit; a loop takes well under a second
    with torch.no_grad():
        yield models.diffusers_pixart("alpha", 64, tiny=True, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def flux():
    with torch.no_grad():
        yield models.diffusers_flux(32, tiny=True, device="cpu", dtype=torch.float32)


def _engine_loop(den, sched, **kw):
    with torch.no_grad(), cached(den.model, sched, **kw) as h:
        h.tracker.scheduler_set(den.timesteps)
        x = den.loop()
        stats = h.finish_run()
    return x, stats


def _ceiling_loop(den, sched):
    with torch.no_grad(), CeilingCache(den.unit_modules, sched.effective_bits()) as c:
        return den.loop(lambda i: setattr(c, "step", i))


@pytest.mark.parametrize("preset", ["pixart-alpha-256-fast", "pixart-alpha-256-fastest"])
def test_ceiling_and_engine_give_identical_outputs_pixart(alpha, preset):
    sched = load_schedule(SCHEDULES / f"{preset}.json")
    with torch.no_grad():
        ref = alpha.loop()
    a, stats = _engine_loop(alpha, sched)
    b = _ceiling_loop(alpha, sched)
    assert torch.equal(a, b)
    assert not torch.equal(a, ref)  # the schedule really skipped work
    eff = sched.effective_bits()
    assert stats.computed.tolist() == eff.sum(1).tolist() and stats.fallback.sum() == 0


def test_ceiling_and_engine_give_identical_outputs_flux(flux):
    sched = load_schedule(SCHEDULES / "flux-dev-256-faster.json")
    a, stats = _engine_loop(flux, sched)
    b = _ceiling_loop(flux, sched)
    assert torch.equal(a, b)
    assert stats.reused.sum() == (~sched.effective_bits()).sum()


def test_ceiling_refuses_wrong_shapes_and_restores_modules(alpha):
    with pytest.raises(ValueError, match=r"bits must be \[steps, 84\]"):
        CeilingCache(alpha.unit_modules, np.ones((20, 83), bool))
    c = CeilingCache(alpha.unit_modules, np.ones((20, 84), bool))
    c.remove()
    assert all("forward" not in m.__dict__ for m in alpha.unit_modules)


def test_all_recompute_patched_model_equals_unpatched(alpha, flux):
    for den in (alpha, flux):
        with torch.no_grad():
            ref = den.loop()
        full = Schedule.full(find_diffusers_units(den.model).layout, den.steps)
        out, stats = _engine_loop(den, full)
        assert torch.equal(out, ref)
        assert stats.total_reused == 0


def test_step_tracker_reads_scheduler_views_without_a_device_read(alpha, monkeypatch):
    tr = diffusers_api.StepTracker(CacheEngine(load_schedule(SCHEDULES / "pixart-alpha-256-fast.json")))
    ts = alpha.timesteps
    tr.scheduler_set(ts)
    assert tr.value_without_sync(ts[3].expand(2)) == float(ts[3])
    assert tr.value_without_sync(ts[3][None].expand(2)) == float(ts[3])
    assert tr.value_without_sync(ts[3].clone()) is None  # another tensor: read it
    assert tr.value_without_sync(ts[2:4]) is None  # two different timesteps
    assert tr.value_without_sync(ts[3].float()) is None  # converted (FLUX pipelines): read it

    # a whole engine loop whose timesteps are views never reads the timestep's value from the device
    def no_read(args, kwargs):
        raise AssertionError("the step tracker read the timestep from the device")

    monkeypatch.setattr(diffusers_api, "_timestep_value", no_read)
    sched = load_schedule(SCHEDULES / "pixart-alpha-256-fast.json")
    a, stats = _engine_loop(alpha, sched)
    assert torch.equal(a, _ceiling_loop(alpha, sched)) and stats.calls == alpha.steps


def test_tiny_pipeline_run_tracks_steps_from_scheduler_views(monkeypatch):
    # a real diffusers PixArt pipeline passes views of scheduler.timesteps: no per-call device read needed
    pipe = tiny_pixart_pipeline("alpha", layers=2)
    lay = make_layout("pixart", 2)
    bits = np.zeros((4, lay.n_units), bool)
    bits[::2] = True
    sched = Schedule(lay, bits, name="every-2")
    monkeypatch.setattr(diffusers_api, "_timestep_value", lambda a, k: (_ for _ in ()).throw(AssertionError("read")))
    with cached(pipe, sched) as h:
        pipe.set_progress_bar_config(disable=True)
        pipe(
            "a red cube",
            num_inference_steps=4,
            height=64,
            width=64,
            output_type="latent",
            clean_caption=False,
            generator=torch.Generator().manual_seed(0),
        )
        st = h.finish_run()
    assert st.computed.tolist() == [6, 0, 6, 0] and st.reused.tolist() == [0, 6, 0, 6]


def test_flux_pipeline_steps_are_counted_from_the_scheduler_with_one_device_read_per_run(monkeypatch):
    # FLUX pipelines pass timestep.to(dtype) / 1000 (no view of scheduler.timesteps): the tracker counts
    # scheduler.step calls instead of reading the value each call; it reads it once, at the run's first call
    pipe = tiny_flux_pipeline(double=1, single=1)
    lay = make_layout("flux", 1, 1)
    bits = np.zeros((4, lay.n_units), bool)
    bits[::2] = True
    sched = Schedule(lay, bits, name="every-2")
    reads = []
    original = diffusers_api._timestep_value
    monkeypatch.setattr(diffusers_api, "_timestep_value", lambda a, k: reads.append(1) or original(a, k))
    kw = dict(num_inference_steps=4, height=64, width=64, output_type="latent", max_sequence_length=16)
    with cached(pipe, sched) as h:
        pipe.set_progress_bar_config(disable=True)
        for run in range(2):
            out = pipe("a red cube", generator=torch.Generator().manual_seed(0), **kw).images
            st = h.finish_run()
            assert st.computed.tolist() == [6, 0, 6, 0] and st.reused.tolist() == [0, 6, 0, 6]
            assert st.calls == 4 and len(reads) == run + 1
        assert "step" in pipe.scheduler.__dict__ and h.tracker.can_count()
    assert "step" not in pipe.scheduler.__dict__ and "set_timesteps" not in pipe.scheduler.__dict__
    # the counted run equals a run whose steps come from reading every timestep
    monkeypatch.setattr(diffusers_api.StepTracker, "can_count", lambda self: False)
    with cached(pipe, sched) as h:
        ref = pipe("a red cube", generator=torch.Generator().manual_seed(0), **kw).images
        assert h.finish_run().reused.tolist() == [0, 6, 0, 6]
    assert torch.equal(out, ref)


def test_keep_store_mode_matches_the_plain_engine_and_never_reads_last_runs_buffers():
    lay = make_layout("pixart", 1)
    bits = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0]], bool)
    f = lambda x: x * 3 + 1
    outs = {}
    for keep in (False, True):
        eng = CacheEngine(Schedule(lay, bits))
        eng.keep_store = keep
        res = []
        for run in range(2):
            eng.begin_run()
            for step in range(3):
                eng.set_position(step, 0)
                # clone: in keep-store mode a reused output is the static buffer, rewritten later in place
                res.append(eng.call(0, f, (torch.full((2,), float(step + 10 * run)),), {}).clone())
            eng.end_run()
        outs[keep] = torch.stack(res)
        if keep:
            assert eng._store, "graph mode keeps its static buffers across runs"
            # a branch first seen mid-run must compute, not read a buffer written in an earlier run
            eng.begin_run()
            eng.set_position(0, "a")
            eng.call(0, f, (torch.ones(2),), {})
            eng.set_position(1, "b")
            eng.call(0, f, (torch.ones(2),), {})
            assert eng.stats.fallback[1] == 1
    assert torch.equal(outs[False], outs[True])


def test_cuda_graphs_fall_back_on_cpu_with_a_clear_reason(alpha, caplog):
    sched = load_schedule(SCHEDULES / "pixart-alpha-256-fastest.json")
    eager, _ = _engine_loop(alpha, sched)
    with caplog.at_level(logging.WARNING, logger="ecad"):
        with torch.no_grad(), cached(alpha.model, sched, cuda_graphs=True) as h:
            h.tracker.scheduler_set(alpha.timesteps)
            out = alpha.loop()
            status = h.cuda_graphs
    assert status["active"] is False and "CUDA" in status["reason"] and "running eagerly" in status["reason"]
    assert any("CUDA graphs off" in r.getMessage() for r in caplog.records)
    assert torch.equal(out, eager)
    assert "forward" not in alpha.model.__dict__


def test_cuda_graph_reasons_name_the_obstacle(alpha, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    eng = CacheEngine(load_schedule(SCHEDULES / "pixart-alpha-256-fast.json"))
    assert "on a CUDA device (it is on cpu)" in unsupported_reason(alpha.model, eng)
    gm = GraphMode(alpha.model, eng)  # refuses without touching the model
    assert not gm.active and "forward" not in alpha.model.__dict__ and not eng.keep_store


def test_bench_diffusers_smoke_writes_results(tmp_path):
    out = tmp_path / "d.json"
    # 4 steps (the engine remaps the preset; the ceiling replays its first rows): a smoke run, not a timing
    res = bench_diffusers.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--res",
            "64",
            "--steps",
            "4",
            "--rounds",
            "1",
            "--graphs",
            "--presets",
            "pixart-alpha-256-fastest",
            "--out",
            str(out),
        ]
    )
    v = res["variants"]
    assert set(v) == {
        "no cache",
        "patched, all recompute",
        "engine pixart-alpha-256-fastest",
        "ceiling pixart-alpha-256-fastest",
        "any module cache pixart-alpha-256-fastest",
        "graphs, no cache",
        "graphs pixart-alpha-256-fastest",
        "graphs ceiling pixart-alpha-256-fastest",
    }
    assert v["patched, all recompute"]["diff_vs_ref"] == 0.0
    assert v["graphs pixart-alpha-256-fastest"]["diff_vs_ref"] == 0.0  # the fallback is the eager engine
    assert v["graphs pixart-alpha-256-fastest"]["stats"]["cuda_graphs"]["active"] is False
    # the graph ceiling is refused alike (eager, static buffers): equal to the eager ceiling, the reason recorded
    gc = v["graphs ceiling pixart-alpha-256-fastest"]
    assert gc["diff_vs_ref"] == 0.0 and gc["ref"] == "ceiling pixart-alpha-256-fastest"
    assert gc["stats"]["cuda_graphs"]["active"] is False and "CUDA" in gc["stats"]["cuda_graphs"]["reason"]
    assert out.is_file() and "of_ceiling" in v["engine pixart-alpha-256-fastest"]


def test_bench_comfy_smoke_on_comfyui_pixart(tmp_path, comfy_dir):
    # ComfyUI v0.3.75's PixArt needs a latent of at least 48 (its position embedding divides by
    # round(latent/64)), so the smallest run is 384²; two steps of a remapped preset keep it short.
    res = bench_comfy.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--res",
            "384",
            "--steps",
            "2",
            "--rounds",
            "1",
            "--presets",
            "pixart-alpha-256-fast",
            "--profile",
            str(tmp_path / "prof"),
        ]
    )
    v = res["variants"]
    assert v["patched, all recompute"]["diff_vs_ref"] == 0.0
    st = v["pack pixart-alpha-256-fast"]["stats"]
    assert st["remapped_from_steps"] == 20 and st["computed"] + st["reused"] == 2 * 84
    assert len(list((tmp_path / "prof").glob("profile_*.txt"))) == 2


def test_bench_comfy_smoke_on_comfyui_flux(comfy_dir):
    # ComfyUI's own FLUX.1-dev (57 tiny blocks): pack and ceiling replay the same remapped schedule through the
    # block hooks, bit-identical to each other, and all-recompute equals no cache
    res = bench_comfy.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--variant",
            "flux",
            "--res",
            "64",
            "--steps",
            "3",
            "--rounds",
            "1",
            "--presets",
            "flux-dev-1024-fast",
        ]
    )
    v = res["variants"]
    assert res["model"] == "flux-dev"
    assert v["patched, all recompute"]["diff_vs_ref"] == 0.0
    assert v["pack flux-dev-1024-fast"]["diff_vs_ref"] == 0.0
    assert v["pack flux-dev-1024-fast"]["ref"] == "ceiling flux-dev-1024-fast"
    st = v["pack flux-dev-1024-fast"]["stats"]
    assert st["remapped_from_steps"] == 20 and st["reused"] > 0 and st["computed"] + st["reused"] == 3 * 171


def test_comfy_graph_mode_checks_and_microconds(comfy_dir):
    # The safety checks the Apply node's cuda_graphs option runs at each sampling run, on ComfyUI's own PixArt
    # (the capture itself needs a GPU: bench.comfy_graphs_check), and PixArt-α's size/aspect conditioning made
    # before the forward: the model must give exactly what it gives when it makes them itself.
    bench_comfy.import_comfy("cpu")
    adapters, _, _ = bench_comfy.pack_modules()
    graphs = bench_comfy.graphs_module()
    with torch.no_grad():
        den = bench_comfy.comfy_pixart("alpha", 384, tiny=True, device="cpu", dtype=torch.float32, steps=2)
        dm = den.model
        assert "off the GPU" in graphs.comfy_run_check(dm)
        lin = dm.blocks[1].attn.qkv
        lin.weight_function = [lambda w, **kw: w]
        assert "weight functions" in graphs.comfy_run_check(dm) and "blocks.1.attn.qkv" in graphs.comfy_run_check(dm)
        lin.weight_function = []
        lin.comfy_cast_weights = True
        assert "casts this model's weights" in graphs.comfy_run_check(dm)
        lin.comfy_cast_weights = False

        ad = adapters.pixart.PixArtComfy(dm)
        assert ad.graph_kwargs == ("context", "c_size", "c_ar")
        x, ctx = den.x0, den.inputs["context"]
        t = den.inputs["timesteps"][0].expand(x.shape[0])
        own = dm(x, t, context=ctx, transformer_options={})  # PixArt makes c_size / c_ar itself
        args, kw = ad.graph_prepare((x, t), {"context": ctx, "transformer_options": {}})
        assert kw["c_size"].shape == (2, 2) and kw["c_ar"].shape == (2, 1)
        assert torch.equal(dm(*args, **kw), own)
        given = {"context": ctx, "c_size": kw["c_size"] * 2, "c_ar": kw["c_ar"]}
        assert ad.graph_prepare((x, t), given)[1] is given  # given conditioning is left alone


def test_bench_search_smoke_splits_the_time(tmp_path):
    res = bench_search.main(
        [
            "--layers",
            "2",
            "--steps",
            "3",
            "--size",
            "64",
            "--prompts",
            "1",
            "--population",
            "4",
            "--generations",
            "1",
            "--out",
            str(tmp_path / "s.json"),
        ]
    )
    assert res["evaluations"] >= 4 and res["evaluations_per_min"] > 0
    assert abs(sum(res["time_share"].values()) - 1) < 0.01 and (tmp_path / "s.json").is_file()


def test_flux_single_block_computes_only_the_linear1_rows_a_step_needs(comfy_dir):
    # ComfyUI's own FLUX single block (small width): with one of attn / MLP served from the cache, only the
    # other's rows of the fused linear1 run, and the block's output matches the all-computed one.
    bench_comfy.import_comfy("cpu")
    adapters, _, _ = bench_comfy.pack_modules()
    import comfy.ops
    from comfy.ldm.flux.layers import EmbedND, SingleStreamBlock

    torch.manual_seed(0)
    blk = SingleStreamBlock(64, 2, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.05)
    ids = torch.zeros(1, 12, 3)
    ids[0, :, 1] = torch.arange(12)
    args = {"img": torch.randn(1, 12, 64), "vec": torch.randn(1, 64), "pe": EmbedND(32, 10000, [8, 12, 12])(ids)}
    single = adapters.flux.FluxSingleRestatement

    def run(attn=None, mlp=None):
        got = {}
        out = single.restated(
            blk,
            {**args, "img": args["img"].clone()},
            attn,
            mlp,
            None,
            lambda v: got.setdefault("attn", v),
            lambda v: got.setdefault("mlp", v),
            lambda v: got.setdefault("proj", v),
        )
        return out["img"], got

    with torch.no_grad():
        full, parts = run()
        whole_calls = []
        original = blk.linear1.forward
        blk.linear1.forward = lambda *a, **k: whole_calls.append(1) or original(*a, **k)
        only_mlp, got_mlp = run(attn=parts["attn"])
        only_attn, got_attn = run(mlp=parts["mlp"])
        del blk.linear1.forward
    assert whole_calls == [], "linear1 ran whole although one of its parts was cached"
    torch.testing.assert_close(got_mlp["mlp"], parts["mlp"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_attn["attn"], parts["attn"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(only_mlp, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(only_attn, full, rtol=1e-5, atol=1e-6)
    # a layer ComfyUI must cast (or patch) runs whole through its own forward, then is sliced
    blk.linear1.comfy_cast_weights = True
    x = torch.randn(1, 3, 64)
    torch.testing.assert_close(adapters.flux.linear_rows(blk.linear1, x, 192, 200), blk.linear1(x)[..., 192:200])


def test_gpu_suite_refuses_without_cuda_and_summarises(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_suite.main(["--out", "/tmp/unused-ecad-suite"])
    suite = {
        "hardware": {"gpu": "X"},
        "sections": {"s": {"variants": {"no cache": {"median_ms": 2.0, "speedup": 1.0, "spread_pct": 1.0}}}},
        "errors": {"t": "boom"},
        "skipped": ["u"],
    }
    text = gpu_suite.summary(suite)
    assert "no cache" in text and "t: ERROR boom" in text and "skipped: u" in text


def test_gpu_suite_only_takes_groups_and_names_unknown_sections(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_suite, "hardware", lambda device: {"gpu": "test"})
    with pytest.raises(SystemExit, match="no section bogus_section"):
        gpu_suite.main(["--out", str(tmp_path), "--only", "bogus_section"])
    # a zero budget skips everything: the group expands to its sections, in suite order
    suite = gpu_suite.main(["--out", str(tmp_path), "--only", "recheck", "--budget-s", "0"])
    order = [s[0] for s in gpu_suite.sections(False, 3)]
    assert suite["skipped"] == sorted(gpu_suite.GROUPS["recheck"], key=order.index) and not suite["sections"]


@pytest.mark.parametrize("kind,only", [("double", None), ("single", None), ("single", 5)])
def test_comfy_flux_restatement_that_differs_from_the_block_falls_back(comfy_dir, monkeypatch, caplog, kind, only):
    # A ComfyUI whose FLUX block no longer matches the pack's re-statement must neither stop sampling nor change
    # the image: the model switches to the module-level fallback (issue #16), with one warning
    bench_comfy.import_comfy("cpu")
    adapters, engine_mod, schedule_mod = bench_comfy.pack_modules()
    importlib.import_module("comfyui_ecad_bench.ecad_core.hooks").forget_verified()
    with torch.no_grad():
        den = bench_comfy.comfy_flux(64, tiny=True, device="cpu", dtype=torch.float32, steps=2)
        plain = den.call(den.x0.clone(), 0)
    fb = adapters.flux.FluxDoubleRestatement if kind == "double" else adapters.flux.FluxSingleRestatement
    real = fb.restated

    def off(blk, *a, **k):  # every block, or only single block `only` (each block is checked at its first call)
        out = real(blk, *a, **k)
        if only is not None and blk is not den.model.single_blocks[only]:
            return out
        return {key: v * 1.001 for key, v in out.items()}

    monkeypatch.setattr(fb, "restated", staticmethod(off))
    ad = adapters.flux.FluxComfy(den.model)
    eng = engine_mod.CacheEngine(schedule_mod.Schedule.full(ad.layout, 2))
    mp = bench_comfy.Patcher(den.model, den.transformer_options)
    run = type("Run", (), {"engine": eng, "capture": None})()
    ad.install(mp, run)
    try:
        eng.begin_run(2)
        eng.set_position(0, ("cond",))
        with torch.no_grad(), caplog.at_level("WARNING", logger="ecad"):
            out = den.call(den.x0.clone(), 0)
    finally:
        eng.end_run()
        mp.unpatch()
    where = f"{kind}_blocks.{only or 0}"
    assert torch.equal(out, plain)
    assert run.hook_path.off.startswith(f"{where} differs from ComfyUI's block (")
    assert caplog.text.count("ECAD: FLUX on ComfyUI") == 1


def test_unit_timer_seam_times_computed_units_only_and_never_patches_the_class():
    from ecad_core.engine import unit_timing

    lay = make_layout("pixart", 1)
    sched = Schedule(lay, np.array([[1, 1, 1], [0, 1, 0]], bool))
    x = torch.ones(2)
    hot_path = CacheEngine.__dict__["_unit_call"]

    def run(eng):
        eng.begin_run()
        for step in range(2):
            eng.set_position(step)
            for u in range(3):
                eng.call(u, torch.add, (x, u), {})
        return eng.end_run()

    eng = CacheEngine(sched)
    assert "_unit_call" not in vars(eng)  # no timer: the class's own hot path, nothing in between
    timed = []
    eng.unit_timer = lambda unit, compute: timed.append(unit) or compute()
    assert run(eng).total_reused == 2 and timed == [0, 1, 2, 1]  # reuses are not timed
    eng.unit_timer = None
    assert "_unit_call" not in vars(eng) and run(eng).total_computed == 4 and timed == [0, 1, 2, 1]
    # unit_timing: every engine that begins a run inside it (as the latency objective drives the hosts' engines)
    other, ambient = CacheEngine(sched), []
    with unit_timing(lambda unit, compute: ambient.append(unit) or compute()):
        run(other)
        assert CacheEngine.__dict__["_unit_call"] is hot_path
    run(other)  # a run begun after it is untimed again
    assert ambient == [0, 1, 2, 1] and "_unit_call" not in vars(other)


def test_latency_measurement_leaves_the_engine_class_alone():
    from ecad_core.costs import measured_latency_cost

    pipe = tiny_pixart_pipeline("alpha", layers=2)
    lay = make_layout("pixart", 2)
    hot_path = CacheEngine.__dict__["_unit_call"]
    seen = []

    def sample():
        pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="latent")

    def patched():
        seen.append(CacheEngine.__dict__["_unit_call"] is hot_path)
        with cached(pipe, Schedule.full(lay, 2)):
            sample()

    cost = measured_latency_cost(pipe.transformer, lay, 2, sample, run_patched=patched, warmup=False)
    assert seen == [True] and (cost.unit > 0).all()
