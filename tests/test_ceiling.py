"""The zero-overhead ceiling (bench/ceiling.py) replays a schedule with the engine's unit structure and no
bookkeeping: its images equal the engine's bit for bit on both paths (PixArt, FLUX.1; tiny models, the shipped
presets), and the engine's cache never holds more than the ceiling's, which keeps one output per unit that the
next step reuses (issue #21's memory target, measured with ``CacheEngine.cache_bytes``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils import _pytree as pytree

from bench import bench_comfy, bench_diffusers, models
from bench.ceiling import CeilingGraphs, ceiling_for
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


# -- the ceiling in static buffers and in CUDA graphs (bench.ceiling.CeilingGraphs) -------------------------------


def _other_start(den):
    """A second image from another starting latent: a graph replayed with its capture-time inputs would show."""
    return dataclasses.replace(den, x0=den.x0.flip(-1) * 0.9)


def _static_ceiling_loop(den, bits, images=1, capture=None):
    """Images of the static-buffer ceiling (through ``CeilingGraphs`` with ``capture``, if given; images after the
    first from ``_other_start``), the ceiling, the runner's status."""
    xs, status = [], None
    with torch.no_grad(), ceiling_for(den.model, bits, static=True) as c:
        g = CeilingGraphs(den.model, c, capture=capture(c)) if capture else None
        try:
            for k in range(images):
                xs.append((_other_start(den) if k else den).loop(lambda i: setattr(c, "step", i)))
            status = g and g.status()
        finally:
            if g is not None:
                g.remove()
    assert "forward" not in den.model.__dict__
    return xs, c, status


@pytest.mark.parametrize("model,preset", CASES)
def test_static_buffer_ceiling_equals_list_ceiling_and_engine(diffusers_models, model, preset):
    den = diffusers_models[model]
    sched = remap_steps(load_schedule(SCHEDULES / f"{preset}.json"), STEPS)
    bits = replay_bits(sched, STEPS)
    engine, _ = _diffusers_engine_loop(den, sched)
    listed, _ = _ceiling_loop(den, bits)
    (static, again), c, _ = _static_ceiling_loop(den, bits, images=2)
    assert torch.equal(static, listed) and torch.equal(static, engine)
    # the buffers persist between images and are overwritten before each read
    assert torch.equal(again, _ceiling_loop(_other_start(den), bits)[0])
    assert c.static and c.out == [None] * len(c.out)  # freed on removal
    assert "forward" not in den.model.transformer_blocks[0].__dict__


def test_static_keep_rows_cover_every_step_of_a_row():
    """One graph per distinct row serves each step with that row: a row keeps what any of its steps keeps."""
    import numpy as np

    from bench.ceiling import _Replay

    bits = np.array([[1, 1], [1, 0], [0, 1], [1, 0], [1, 1]], bool)  # steps 1 and 3 alike, 0 and 4 alike
    F, T = False, True
    assert _Replay(bits, 2, "t").keep == [[F, T], [T, F], [F, T], [F, F], [F, F]]  # what the next step reuses
    # steps 3 and 4 keep what steps 1 and 0 keep: their graphs are the same
    assert _Replay(bits, 2, "t", static=True).keep == [[F, T], [T, F], [F, T], [T, F], [F, T]]


class _Recorder:
    """A stand-in for ``CudaGraphCapture`` on the CPU: ``warm`` and ``capture`` run the function (recorded with
    the ceiling's step), a graph's ``replay`` reruns it at the step it was captured at (a CUDA graph replays the
    row it recorded, whatever the current step) and copies the result into the static output it returned."""

    def __init__(self, c):
        self.c, self.events, self.replayed = c, [], []

    def warm(self, fn):
        self.events.append(("warm", self.c.step))
        return fn()

    def capture(self, fn):
        rec, at = self, self.c.step
        rec.events.append(("capture", at))
        out = fn()

        class Graph:
            def replay(self):
                rec.events.append(("replay", at, rec.c.step))
                now, rec.c.step = rec.c.step, at
                try:
                    new = fn()
                finally:
                    rec.c.step = now
                for o, n in zip(pytree.tree_leaves(out), pytree.tree_leaves(new), strict=True):
                    o.copy_(n)
                rec.replayed.append((out, [t.clone() for t in pytree.tree_leaves(out)]))

        return Graph(), out


def _repeated_rows(n_units):
    """Rows that recur with different keep bits: R (unit 0 reused) at steps 1, 3, 7; only step 3's next step (X)
    reuses unit 5, so the graph captured at step 1 must write unit 5 too when step 3 replays it."""
    import numpy as np

    a, r, x = np.ones(n_units, bool), np.ones(n_units, bool), np.ones(n_units, bool)
    r[0] = x[5] = False
    return np.stack([a, r, a, r, x, a, a, r])


@pytest.mark.parametrize(
    "model,preset",
    [("alpha", "pixart-alpha-256-fastest"), ("flux", "flux-dev-256-faster"), ("alpha", None), ("flux", None)],
)
def test_graph_ceiling_captures_each_row_once_replays_it_and_equals_eager(diffusers_models, model, preset, monkeypatch):
    den = diffusers_models[model]
    if preset is None:
        bits = _repeated_rows(len(den.unit_modules))
    else:
        bits = replay_bits(remap_steps(load_schedule(SCHEDULES / f"{preset}.json"), STEPS), STEPS)
    _check_graph_ceiling(den, bits, monkeypatch)


def _check_graph_ceiling(den, bits, monkeypatch):
    """``CeilingGraphs`` with the recording stand-in over two images: each row captured once, every call but the
    warm-up a replay of its own row's graph, the images equal to the list ceiling's."""
    listed, _ = _ceiling_loop(den, bits)
    listed2, _ = _ceiling_loop(_other_start(den), bits)
    assert not torch.equal(listed2, listed)
    recorders = []

    def capture(c):
        recorders.append(_Recorder(c))
        return recorders[-1]

    returned = []
    real_forward = CeilingGraphs.forward

    def spy(self, *a, **k):
        returned.append(real_forward(self, *a, **k))
        return returned[-1]

    monkeypatch.setattr(CeilingGraphs, "forward", spy)
    (first, second), c, st = _static_ceiling_loop(den, bits, images=2, capture=capture)
    # a wrong graph for a row or a stale input (the stand-in replays what was captured) would change the image
    assert torch.equal(first, listed) and torch.equal(second, listed2)
    ev = recorders[0].events
    rows = [bytes(r) for r in c.rows]
    distinct = list(dict.fromkeys(rows[1:]))
    assert len(distinct) > 2  # the schedule has rows to confuse
    assert ev[0] == ("warm", 0)  # the first call at a new signature: eager
    first_seen = [s for s in range(1, STEPS) if rows[s] not in rows[1:s]]
    image1 = [e for s in range(1, STEPS) for e in ([("capture", s)] if s in first_seen else [])]
    assert [e for e in ev if e[0] == "capture"][: len(image1)] == image1  # each row captured at its first call
    replays = [e for e in ev if e[0] == "replay"]
    assert len(replays) == 2 * STEPS - 1  # every call but the warm-up replays
    assert all(rows[at] == rows[now] for _, at, now in replays)  # the graph of the call's own row
    captured_in_2 = [e for e in ev[STEPS + len(image1) :] if e[0] == "capture"]
    assert captured_in_2 == ([] if rows[0] in distinct else [("capture", 0)])  # only step 0's row was new
    assert st == {
        "active": True,
        "reason": None,
        "graphs": len(set(rows)),
        "captures": len(set(rows)),
        "replays": 2 * STEPS - 1,
        "eager_calls": 1,
    }
    # each replay's result is a copy of the static output of the graph it replayed
    for r, (out, after) in zip(returned[1:], recorders[0].replayed, strict=True):
        r = pytree.tree_leaves(r)  # diffusers: a tuple, ComfyUI: a tensor
        assert torch.equal(r[0], after[0]) and r[0].data_ptr() != pytree.tree_leaves(out)[0].data_ptr()


def test_graph_ceiling_refused_without_cuda_runs_eagerly_with_the_reason(diffusers_models):
    den = diffusers_models["alpha"]
    sched = remap_steps(load_schedule(SCHEDULES / "pixart-alpha-256-fast.json"), STEPS)
    bits = replay_bits(sched, STEPS)
    with ceiling_for(den.model, bits, static=True) as c:
        g = CeilingGraphs(den.model, c)
        assert g.status()["active"] is False and "CUDA" in g.status()["reason"]
        assert "forward" not in den.model.__dict__  # the model is left alone
    with pytest.raises(ValueError, match="static buffers"):
        with ceiling_for(den.model, bits) as c:
            CeilingGraphs(den.model, c)
    v = bench_diffusers.graph_ceiling_variant(den, sched, "graphs ceiling x", "x")
    assert v.kind == "graphs-ceiling" and v.persistent
    pre, remove, stats = v.setup()
    try:
        with torch.no_grad():
            x = den.loop(pre)
        assert stats()["cuda_graphs"]["active"] is False and "CUDA" in stats()["cuda_graphs"]["reason"]
    finally:
        remove()
    listed, _ = _ceiling_loop(den, bits)
    assert torch.equal(x, listed)


def test_graph_rows_are_divided_by_the_graph_ceiling():
    from bench.runner import _derive

    def v(kind, preset, ms):
        return {"kind": kind, "preset": preset, "median_ms": ms}

    res = {
        "no cache": v("nocache", None, 100.0),
        "engine p": v("engine", "p", 50.0),
        "ceiling p": v("ceiling", "p", 40.0),
        "graphs p": v("graphs", "p", 20.0),
        "graphs ceiling p": v("graphs-ceiling", "p", 19.0),
        "graphs q": v("graphs", "q", 10.0),  # no graph ceiling for q: no ratio
        "ceiling q": v("ceiling", "q", 8.0),
    }
    _derive(res, {})
    assert res["engine p"]["of_ceiling"] == 40.0 / 50.0
    assert res["graphs p"]["of_ceiling"] == 19.0 / 20.0
    assert "of_ceiling" not in res["graphs q"] and "of_ceiling" not in res["graphs ceiling p"]


# -- ComfyUI PixArt in static buffers and in CUDA graphs (bench_comfy --graphs: the pack's graph rows' reference) ---

COMFY_ALPHA = ["pixart-alpha-256-fast", "pixart-alpha-256-faster", "pixart-alpha-256-fastest"]


def _comfy_bits(schedule_mod, preset, steps=STEPS):
    return schedule_mod.remap_steps(schedule_mod.load_schedule(SCHEDULES / f"{preset}.json"), steps)


@pytest.mark.comfy
@pytest.mark.parametrize("preset", COMFY_ALPHA)
def test_static_comfy_ceiling_equals_list_ceiling_and_pack(comfy, preset):
    dens, adapters, engine_mod, schedule_mod = comfy
    den = dens["alpha"]
    sched = _comfy_bits(schedule_mod, preset)
    bits = sched.effective_bits()
    pack, _ = _comfy_engine_loop(den, sched, adapters, engine_mod)
    listed, _ = _ceiling_loop(den, bits)
    (static, again), c, _ = _static_ceiling_loop(den, bits, images=2)
    assert type(c).__name__ == "ComfyPixArtCeiling" and c.static
    assert torch.equal(static, listed) and torch.equal(static, pack)
    # the buffers persist between images and are overwritten before each read
    assert torch.equal(again, _ceiling_loop(_other_start(den), bits)[0])
    assert c.out == [None] * len(c.out)
    assert "forward" not in den.model.blocks[0].__dict__
    # static: each unit's buffer, once stored, is the same storage at every later step (graphs read it there)
    slots = []
    with torch.no_grad(), ceiling_for(den.model, bits, static=True) as c:

        def pre(i):
            slots.append([None if t is None else t.data_ptr() for t in c.out])
            c.step = i

        den.loop(pre)
        slots.append([None if t is None else t.data_ptr() for t in c.out])
    stored = [[p for p in col if p is not None] for col in zip(*slots, strict=True)]
    assert any(stored)
    for col, ptrs in zip(zip(*slots, strict=True), stored, strict=True):
        assert len(set(ptrs)) <= 1 and col[len(col) - len(ptrs) :] == tuple(ptrs)  # never replaced, never freed


@pytest.mark.comfy
@pytest.mark.parametrize("preset", ["pixart-alpha-256-fastest", None])
def test_comfy_graph_ceiling_captures_each_row_once_and_equals_eager(comfy, preset, monkeypatch):
    # ComfyUI's call (x, timesteps, context=, c_size=, c_ar=, transformer_options={}) through CeilingGraphs
    dens, _, _, schedule_mod = comfy
    den = dens["alpha"]
    bits = _repeated_rows(84) if preset is None else _comfy_bits(schedule_mod, preset).effective_bits()
    _check_graph_ceiling(den, bits, monkeypatch)


def _comfy_graph_variants(comfy, den, presets, **kw):
    _, adapters, engine_mod, schedule_mod = comfy
    return bench_comfy.variants(
        den, presets, adapters, engine_mod, schedule_mod, graphs=True, graphs_mod=bench_comfy.graphs_module(), **kw
    )


@pytest.mark.comfy
def test_comfy_graph_ceiling_variant_refused_without_cuda_runs_eagerly(comfy):
    dens, _, _, schedule_mod = comfy
    den, preset = dens["alpha"], "pixart-alpha-256-fast"
    vs = {v.name: v for v in _comfy_graph_variants(comfy, den, [preset])}
    v = vs[f"graphs ceiling {preset}"]
    assert v.kind == "graphs-ceiling" and v.persistent and v.preset == preset
    pre, remove, stats = v.setup()
    try:
        with torch.no_grad():
            x = den.loop(pre)
        st = stats()["cuda_graphs"]
        assert st["active"] is False and "CUDA" in st["reason"]
    finally:
        remove()
    assert "forward" not in den.model.__dict__ and "forward" not in den.model.blocks[0].__dict__
    listed, _ = _ceiling_loop(den, _comfy_bits(schedule_mod, preset).effective_bits())
    assert torch.equal(x, listed)
    # ComfyUI's FLUX has no graph mode: no static ceiling, no graph-ceiling row
    flux = dens["flux"]
    with pytest.raises(ValueError, match="FLUX"):
        ceiling_for(flux.model, _comfy_bits(schedule_mod, "flux-dev-1024-fast").effective_bits(), static=True)
    names = [v.name for v in _comfy_graph_variants(comfy, flux, ["flux-dev-1024-fast"], any_module=False)]
    assert "graphs flux-dev-1024-fast" in names and not any(n.startswith("graphs ceiling") for n in names)


@pytest.mark.comfy
def test_comfy_graph_rows_are_divided_by_the_graph_ceiling(comfy):
    from bench.runner import run_variants

    dens = comfy[0]
    den = dataclasses.replace(dens["alpha"], steps=3)  # a short run: the rule, not a timing
    p = "pixart-alpha-256-fastest"
    vs = _comfy_graph_variants(comfy, den, [p], recompute=False, any_module=False)
    with torch.no_grad():
        res = run_variants(den, vs, rounds=1, log=lambda *a: None)
    g, gc = res[f"graphs {p}"], res[f"graphs ceiling {p}"]
    assert gc["kind"] == "graphs-ceiling" and gc["preset"] == p
    assert g["of_ceiling"] == gc["median_ms"] / g["median_ms"]  # never the eager ceiling's
    assert res[f"pack {p}"]["of_ceiling"] == res[f"ceiling {p}"]["median_ms"] / res[f"pack {p}"]["median_ms"]
    assert gc["ref"] == f"ceiling {p}" and gc["diff_vs_ref"] == 0.0  # eager here, in static buffers
    assert g["diff_vs_ref"] == 0.0 and "of_ceiling" not in res["graphs, no cache"]
