"""Schedule search: genome, seeds, metrics, NSGA-II loop, checkpoints, front, CLI (tiny diffusers models)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ecad_core import EcadError, ModelMismatchError, Schedule, load_schedule, make_layout
from ecad_core.cli import build_parser
from ecad_core.costs import macs_cost, uniform_cost
from ecad_core.diffusers.generate import diffusers_generate_fn
from ecad_core.metrics import MetricUnavailable, fidelity_loss, image_mse, latent_rel_mse, load_metric, psnr, ssim
from ecad_core.prompts import load_prompts
from ecad_core.search import (
    CheckpointError,
    EvaluationError,
    FrontPoint,
    GenomeSpace,
    LocalEvaluator,
    SearchSettings,
    SearchSettingsError,
    dominates,
    genome_key,
    heuristic_seeds,
    hypervolume,
    initial_population,
    load_front,
    load_warm_start,
    pareto_indices,
    pick,
    run_search,
)

REPO = Path(__file__).resolve().parents[1]
PIX = make_layout("pixart", 3)


# -- helpers ------------------------------------------------------------------------
class Synthetic:
    """Deterministic stand-in for image generation: caching early steps and long reuse runs hurt."""

    def __init__(self, batch_size=None):
        self.batch_size = batch_size
        self.seen: list[Schedule] = []

    def describe(self):
        return {"evaluator": "synthetic"}

    def evaluate(self, schedules):
        out = []
        for s in schedules:
            self.seen.append(s)
            b = s.effective_bits()
            cached = ~b
            w = np.linspace(2.0, 0.2, b.shape[0])[:, None] * np.linspace(1.0, 2.0, b.shape[1])[None, :]
            runs = (cached[1:] & cached[:-1]).sum()
            out.append(float(0.5 * (w * cached).sum() / w.sum() + 0.01 * runs))
        return out


def _front_sig(res):
    return [(p.quality_loss, p.compute_fraction, p.generation, p.schedule.bits.tobytes()) for p in res.front]


def cli(argv):
    """``python -m ecad_core`` as the main CLI runs it: errors -> exit code 2."""
    p = build_parser()
    a = p.parse_args([str(x) for x in argv])
    try:
        return a.fn(a)
    except (EcadError, ValueError, OSError) as e:
        print(f"error: {e}")
        return 2


# -- genome ----------------------------------------------------------------------------
def test_genome_roundtrip_and_step0():
    sp = GenomeSpace(PIX, 5)
    assert sp.length == 4 * 9
    rng = np.random.default_rng(0)
    g = rng.random(sp.length) < 0.5
    s = sp.decode(g)
    assert s.bits[0].all() and s.steps == 5
    assert np.array_equal(sp.encode(s), g)
    assert np.array_equal(sp.from_key(sp.key(g)), g)
    # step-0 bits do not matter: same genome, same key
    t = s.copy(bits=s.bits.copy())
    t.bits[0, :4] = False
    assert genome_key(sp.encode(t)) == genome_key(g)
    with pytest.raises(ModelMismatchError):
        sp.encode(Schedule.full(PIX, 6))
    with pytest.raises(ModelMismatchError):
        sp.encode(Schedule.full(make_layout("pixart", 4), 5))
    with pytest.raises(ValueError):
        sp.decode(g[:-1])
    with pytest.raises(SearchSettingsError, match="steps"):
        GenomeSpace(PIX, 1)


# -- seeds ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout,steps",
    [
        (make_layout("pixart", 28), 20),
        (make_layout("flux", 19, 38), 20),
        (make_layout("dit_blocks", 12, 4), 10),
        (make_layout("pixart", 2), 6),
    ],
)
def test_initial_population_any_layout(layout, steps):
    sp = GenomeSpace(layout, steps)
    pop = initial_population(sp, 40, seed=3)
    keys = [genome_key(sp.encode(s)) for s in pop]
    assert len(pop) == 40 and len(set(keys)) == 40
    assert all(s.bits[0].all() for s in pop)
    names = [s.name for s in pop]
    assert names[0] == "no-cache" and pop[0].bits.all()
    assert "recompute-all-every-2" in names and "recompute-all-every-5" in names
    again = initial_population(sp, 40, seed=3)
    assert [genome_key(sp.encode(s)) for s in again] == keys
    other = initial_population(sp, 40, seed=4)
    assert [genome_key(sp.encode(s)) for s in other] != keys or len(heuristic_seeds(sp)) >= 40
    small = initial_population(sp, 5, seed=3)
    assert [s.name for s in small] == names[:5]


def test_heuristic_families():
    sp = GenomeSpace(make_layout("pixart", 4), 10)
    by = {s.name: s for s in heuristic_seeds(sp)}
    s = by["cache-attn1-every-2"]
    assert s.bits[:, 0::3].tolist() == [[t % 2 == 0] * 4 for t in range(10)]
    assert s.bits[:, 1::3].all() and s.bits[:, 2::3].all()
    tg = by["tgate-like-attn2-gate-5-sp-1"]  # cross-attention computed before step 5, reused after
    assert tg.bits[:5, 1::3].all() and not tg.bits[5:, 1::3].any() and tg.bits[:, 0::3].all()
    tg3 = by["tgate-like-attn2-gate-5-sp-3"]
    assert tg3.bits[:, 0].tolist() == [True, True, False, True, False, True, True, True, True, True]
    flux = {s.name for s in heuristic_seeds(GenomeSpace(make_layout("flux", 2, 3), 10))}
    assert any(n.startswith("tgate-like-full_ff_context") for n in flux)
    assert "cache-single_proj_mlp-every-3" in flux
    dit = {s.name for s in heuristic_seeds(GenomeSpace(make_layout("dit_blocks", 4, 4), 10))}
    assert not any(n.startswith("tgate") for n in dit) and "cache-single_block-every-2" in dit


def test_warm_start(tmp_path):
    sp = GenomeSpace(PIX, 6)
    a = Schedule.every_n(PIX, 6, 3, name="mine")
    f = a.save(tmp_path / "mine.json")
    ws = load_warm_start([f], sp)
    pop = initial_population(sp, 6, warm_start=ws)
    assert pop[0].name == "mine" and np.array_equal(pop[0].bits, a.effective_bits())
    assert pop[0].provenance["search_seed"]["kind"] == "warm-start"
    # steps mismatch: refused by default, remapped on request
    g = Schedule.every_n(PIX, 12, 2).save(tmp_path / "twelve.json")
    with pytest.raises(SearchSettingsError, match=r"twelve.json.*12 steps.*6 steps"):
        load_warm_start([g], sp)
    (r,) = load_warm_start([g], sp, steps_policy="remap")
    assert r.steps == 6 and r.provenance["remapped"][0]["from_steps"] == 12
    with pytest.raises(ModelMismatchError, match="mismatch|is for"):
        load_warm_start([Schedule.full(make_layout("pixart", 5), 6)], sp)
    with pytest.raises(SearchSettingsError, match="not found"):
        load_warm_start([tmp_path / "nope.json"], sp)


# -- metrics ---------------------------------------------------------------------------
def _ssim_reference(x, y, size=11, sigma=1.5, L=1.0):
    """Plain loops over window positions (independent of the conv implementation)."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                a, b = x[c, i : i + size, j : j + size], y[c, i : i + size, j : j + size]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cov = (w * a * b).sum() - ma * mb
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_image_metrics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 14, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(3, 16, 14, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert float(ssim(x, x)) == pytest.approx(1.0)
    assert float(ssim(x, y)) == pytest.approx(_ssim_reference(x.numpy(), y.numpy()), abs=1e-10)
    assert float(ssim(x, y)) == pytest.approx(float(ssim(y, x)))
    mse = float(((x - y) ** 2).mean())
    assert float(image_mse(x, y)) == pytest.approx(mse)
    assert float(psnr(x, y)) == pytest.approx(-10 * math.log10(mse))
    assert math.isinf(float(psnr(x, x)))
    batch = torch.stack([x, y])
    assert ssim(batch, batch).shape == (2,)
    assert fidelity_loss([x, y], [x, y], "ssim") == pytest.approx(0.0, abs=1e-12)
    assert fidelity_loss([y], [x], "image-mse") == pytest.approx(mse)
    with pytest.raises(ValueError, match="unknown fidelity space"):
        fidelity_loss([x], [x], "lpips")
    with pytest.raises(ValueError, match="2 output"):
        fidelity_loss([x, x], [x], "latent")


def test_latent_rel_mse():
    ref = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert float(latent_rel_mse(ref, ref)) == 0.0
    assert float(latent_rel_mse(torch.zeros_like(ref), ref)) == pytest.approx(1.0)
    assert float(latent_rel_mse(ref * 1.1, ref)) == pytest.approx(0.01)
    assert latent_rel_mse(torch.stack([ref, ref]), torch.stack([ref, 2 * ref])).tolist() == pytest.approx([0.0, 0.25])
    assert fidelity_loss([ref * 1.1, ref], [ref, ref]) == pytest.approx(0.005)
    assert fidelity_loss([ref * float("nan")], [ref]) == math.inf


def test_learned_metrics_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"missing-clip.*config\.json"):
        load_metric("clip", tmp_path / "missing-clip")
    with pytest.raises(MetricUnavailable, match="CLIP weights|local CLIP"):
        load_metric("clip", None)
    # ImageReward needs no package beyond transformers (tests/test_imagereward.py), only its local files
    with pytest.raises(MetricUnavailable, match=r"ImageReward weights not found: .*ImageReward\.pt does not exist"):
        load_metric("imagereward", tmp_path / "ImageReward.pt")
    with pytest.raises(MetricUnavailable, match="needs its local checkpoint file ImageReward.pt"):
        load_metric("imagereward", None)
    assert issubclass(MetricUnavailable, EcadError)


# -- objectives and front -------------------------------------------------------------
def test_compute_cost_matches_cost_model():
    s = load_schedule(REPO / "schedules" / "pixart-alpha-256-fast.json")
    from ecad_core import costs

    c = macs_cost(s.layout, s.steps, "pixart-alpha", 256, 256)
    assert c.fraction(s.effective_bits()) == pytest.approx(
        costs.fraction_of_full(s, "pixart-alpha", 256, 256), rel=1e-12
    )
    u = uniform_cost(s.layout, s.steps)
    assert u.fraction(s.bits) == pytest.approx(s.recompute_fraction())
    # the formula of the brief: (fixed*steps + sum(bits*unit)) / (fixed*steps + steps*sum(unit))
    unit = np.arange(1, s.layout.n_units + 1, dtype=float)
    w = uniform_cost(s.layout, s.steps, unit, fixed_per_step=7.0)
    eff = s.effective_bits()
    want = (7.0 * s.steps + (eff * unit).sum()) / (7.0 * s.steps + s.steps * unit.sum())
    assert w.fraction(eff) == pytest.approx(want)
    with pytest.raises(SearchSettingsError):
        macs_cost(make_layout("pixart", 3), 20, "pixart-alpha", 256, 256)


def test_pareto_and_hypervolume():
    rng = np.random.default_rng(0)
    F = rng.random((60, 2))
    F[5] = F[6]  # a duplicate objective vector
    idx = pareto_indices(F)
    brute = [i for i in range(len(F)) if not any(dominates(F[j], F[i]) for j in range(len(F)))]
    assert set(idx) <= set(brute) and {tuple(F[i]) for i in idx} == {tuple(F[i]) for i in brute}
    # hypervolume against a direct 2-D sweep
    area = 0.0
    by_c = sorted((tuple(F[i]) for i in idx), key=lambda p: p[1])  # compute ascending, loss descending
    for k, (q, c) in enumerate(by_c):
        nxt = by_c[k + 1][1] if k + 1 < len(by_c) else 1.0
        area += (nxt - c) * (1.0 - q)
    assert hypervolume(F) == pytest.approx(area)
    assert hypervolume(F * 3) < hypervolume(F)
    assert hypervolume(np.array([[2.0, 0.5]])) == 0.0
    assert hypervolume(np.array([[0.5, 0.5]]), quality_scale=0.5) == 0.0


def _pt(loss, frac):
    return FrontPoint(Schedule.full(PIX, 2), loss, frac)


def test_pick_rule():
    front = [_pt(0.0, 1.0), _pt(0.01, 0.6), _pt(0.05, 0.4), _pt(0.2, 0.25)]  # x1, x1.67, x2.5, x4
    assert pick(front, max_quality_loss=0.05).compute_fraction == 0.4
    assert pick(front, max_quality_loss=0.001).compute_fraction == 1.0
    assert pick(front, target_speedup=2.0).compute_fraction == 0.4
    assert pick(front, target_speedup=10).compute_fraction == 0.25
    assert pick(front, target_speedup=1.5, max_quality_loss=0.1).compute_fraction == 0.4
    assert pick(front, target_speedup=3.0, max_quality_loss=0.1).compute_fraction == 0.4  # quality wins
    assert pick(front).compute_fraction == 0.4  # knee: farthest below the line joining the ends
    with pytest.raises(EcadError):
        pick([])
    with pytest.raises(ValueError):
        pick(front, target_speedup=-1)


# -- the search loop (synthetic evaluator: fast, exact) -------------------------------
def test_hypervolume_grows_and_front_is_nondominated(tmp_path):
    ev = Synthetic()
    res = run_search(ev, PIX, 8, tmp_path, SearchSettings(population=8, generations=5, seed=0))
    hv = [h["hypervolume"] for h in res.history]
    assert len(hv) == 6 and res.generation == 5 and res.stopped == "generations"
    assert all(b >= a for a, b in itertools.pairwise(hv))
    assert hv[-1] > hv[0] + 1e-3  # a real gain over the seed population for this seed
    F = res.archive
    front = np.array([p.objectives for p in res.front])
    for p in res.front:
        assert not any(dominates(f, p.objectives) for f in F)
    for f in F:  # every evaluated point is dominated by or equal to a front point
        assert any(dominates(q, f) or tuple(q) == tuple(f) for q in front)
    # files: schedule per point + index + plot, loadable
    loaded = load_front(res.front_dir)
    assert [(p.quality_loss, p.compute_fraction) for p in loaded] == sorted(
        [(p.quality_loss, p.compute_fraction) for p in res.front], key=lambda t: -t[1]
    )
    for p in loaded:
        s = load_schedule(p.path)
        assert s.metrics["expected_speedup"] == pytest.approx(1 / s.metrics["compute_fraction"])
        assert s.provenance["search"]["seed"] == 0 and "generation" in s.provenance["search"]
    assert (res.front_dir / "front.png").stat().st_size > 1000
    idx = json.loads((res.front_dir / "front.json").read_text())
    assert idx["stopped"] == "generations" and len(idx["points"]) == len(res.front)
    # an earlier front warm-starts the next search: its points come first in generation 0
    ev2 = Synthetic()
    run_search(ev2, PIX, 8, None, SearchSettings(population=len(loaded) + 2, generations=1), warm_start=[res.front_dir])
    run = [p.schedule.bits.tobytes() for p in loaded if not p.schedule.bits.all()]  # no-cache is never run
    assert [s.bits.tobytes() for s in ev2.seen[: len(run)]] == run


def test_resume_equals_uninterrupted(tmp_path):
    st = dict(population=8, seed=7)
    straight = run_search(Synthetic(), PIX, 8, tmp_path / "a", SearchSettings(generations=3, **st))
    part = run_search(Synthetic(), PIX, 8, tmp_path / "b", SearchSettings(generations=2, **st))
    assert part.generation == 2
    ev = Synthetic()
    resumed = run_search(ev, PIX, 8, tmp_path / "b", SearchSettings(generations=3, **st))
    assert resumed.resumed_from == 2 and resumed.generation == 3
    assert _front_sig(resumed) == _front_sig(straight)
    assert np.array_equal(resumed.archive, straight.archive)
    assert len(ev.seen) == straight.evaluations - part.evaluations  # nothing evaluated twice
    # a finished search started again does nothing
    ev2 = Synthetic()
    again = run_search(ev2, PIX, 8, tmp_path / "b", SearchSettings(generations=3, **st))
    assert ev2.seen == [] and _front_sig(again) == _front_sig(straight)


def test_cancel_mid_generation_then_resume(tmp_path):
    st = dict(population=8, seed=7, generations=3)
    straight = run_search(Synthetic(), PIX, 8, tmp_path / "a", SearchSettings(**st))
    polls = {"n": 0}

    def stop():
        polls["n"] += 1
        return polls["n"] > 12  # gen 0 (1 + 7 polls: no-cache costs no run), then 3 schedules into gen 1

    phases = []
    first = run_search(
        Synthetic(batch_size=1),
        PIX,
        8,
        tmp_path / "b",
        SearchSettings(**st),
        should_stop=stop,
        progress=lambda *a: phases.append(a),
    )
    assert first.stopped == "cancelled" and first.generation == 0 and first.evaluations == 11
    assert ("generation", 1, 4) in phases and ("evaluate", 3, 8) in phases
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    assert (tmp_path / "b" / "front" / "front.json").is_file()
    ev = Synthetic()
    rest = run_search(ev, PIX, 8, tmp_path / "b", SearchSettings(**st))
    assert _front_sig(rest) == _front_sig(straight)
    assert len(ev.seen) == straight.evaluations - 11


def test_duplicates_never_reevaluated_and_step0_computed(tmp_path):
    tiny = make_layout("pixart", 1)  # 3 steps x 3 units: 64 genomes, so offspring repeat often
    ev = Synthetic()
    res = run_search(ev, tiny, 3, None, SearchSettings(population=6, generations=12, seed=1))
    keys = [s.bits.tobytes() for s in ev.seen]
    assert len(keys) == len(set(keys)) == res.evaluations - 1  # all but no-cache, the reference itself
    assert sum(h["memo_hits"] for h in res.history) > 0
    assert all(s.bits[0].all() for s in ev.seen)


def test_no_cache_is_never_run_its_loss_is_zero(tmp_path):
    # the reference run is the all-recompute schedule's output: scoring it again would waste a model run
    ev = Synthetic()
    res = run_search(ev, PIX, 6, None, SearchSettings(population=6, generations=2, seed=3))
    assert not any(s.effective_bits().all() for s in ev.seen)
    assert len(ev.seen) == res.evaluations - 1
    full = [p for p in res.front if p.schedule.bits.all()]
    assert len(full) == 1 and full[0].quality_loss == 0.0 and full[0].compute_fraction == 1.0
    assert full[0].generation == 0 and full[0].schedule.provenance["search"]["initial_name"] == "no-cache"


def test_time_budget_and_progress(tmp_path):
    phases = []
    res = run_search(
        Synthetic(),
        PIX,
        6,
        None,
        SearchSettings(population=4, generations=None, time_budget_s=1e-6),
        progress=lambda *a: phases.append(a),
    )
    assert res.stopped == "time_budget" and res.generation == 0  # generation 0 always runs
    assert phases[-1] == ("generation", 1, 0)


def test_screening_evaluates_only_the_picked_offspring(tmp_path):
    plain = run_search(Synthetic(), PIX, 8, None, SearchSettings(population=8, generations=4, seed=2))
    ev = Synthetic()
    st = SearchSettings(population=8, generations=4, seed=2, screening=6, evaluated_per_generation=3)
    res = run_search(ev, PIX, 8, None, st)
    assert [h["evaluated"] for h in res.history][1:] == [3, 3, 3, 3]  # of 18 bred per generation
    assert len(ev.seen) == res.evaluations - 1 == 7 + 4 * 3
    assert _front_sig(res) != _front_sig(plain)


def test_surrogate_picks_better_offspring_than_chance():
    from ecad_core.search import GenomeSpace
    from ecad_core.search.surrogate import _hv2, screen

    space = GenomeSpace(PIX, 10)
    rng = np.random.default_rng(0)
    ev = Synthetic()

    def objectives(X):
        scheds = [space.decode(x) for x in X]
        return np.array([[loss, s.bits.mean()] for loss, s in zip(ev.evaluate(scheds), scheds)])

    def gain(known_F, F):  # true hypervolume gain of adding F's points to the known front
        return _hv2(np.vstack([known_F, F])) - _hv2(known_F)

    known = rng.random((40, space.length)) < rng.random((40, 1))
    known_F = objectives(known)
    cand = rng.random((120, space.length)) < rng.random((120, 1))
    cand_F = objectives(cand)
    picked = screen(space, cand, cand_F[:, 1], known, known_F, 8, 0.0, 1.0, np.random.default_rng(1))
    assert len(picked) == len(set(picked)) == 8
    chance = [gain(known_F, cand_F[np.random.default_rng(s).choice(120, 8, replace=False)]) for s in range(20)]
    assert gain(known_F, cand_F[picked]) > 2 * np.median(chance)


def test_bad_settings_raise_clear_errors(tmp_path):
    ev = Synthetic()
    bad = [
        (dict(population=1), "population must be an integer >= 2"),
        (dict(generations=0), "generations must be an integer >= 1"),
        (dict(generations=None), "never stop"),
        (dict(time_budget_s=-5), "time budget"),
        (dict(mutation_prob=0.0), "mutation probability"),
        (dict(crossover_prob=1.5), "crossover probability"),
        (dict(seed=-1), "seed"),
        (dict(screening=-1), "screening"),
        (dict(evaluated_per_generation=0), "evaluated per generation"),
        (dict(exploration=1.5), "exploration"),
    ]
    for kw, msg in bad:
        with pytest.raises(SearchSettingsError, match=msg) as e:
            run_search(ev, PIX, 6, None, SearchSettings(**kw))
        assert isinstance(e.value, EcadError) and isinstance(e.value, ValueError)
    with pytest.raises(SearchSettingsError, match="steps"):
        run_search(ev, PIX, 1, None, SearchSettings())
    with pytest.raises(SearchSettingsError, match="cost table"):
        run_search(ev, PIX, 6, None, SearchSettings(), cost=uniform_cost(PIX, 7))

    class Wrong:
        def evaluate(self, schedules):
            return [0.0]

    with pytest.raises(EvaluationError, match="1 loss"):
        run_search(Wrong(), PIX, 6, None, SearchSettings(population=4, generations=1))
    # a checkpoint of other settings is refused, naming the difference
    run_search(Synthetic(), PIX, 6, tmp_path, SearchSettings(population=4, generations=1))
    with pytest.raises(CheckpointError, match="population 4 -> 6"):
        run_search(Synthetic(), PIX, 6, tmp_path, SearchSettings(population=6, generations=1))
    from safetensors.numpy import save_file

    save_file(
        {"x": np.zeros(2)},
        str(tmp_path / "checkpoint.safetensors"),
        metadata={"comfyui-ecad": json.dumps({"format": "something else"})},
    )
    with pytest.raises(CheckpointError, match="not a comfyui-ecad search checkpoint"):
        run_search(Synthetic(), PIX, 6, tmp_path, SearchSettings(population=4, generations=1))


# -- real (tiny) diffusers pipelines ---------------------------------------------------
@pytest.fixture(scope="module")
def pixart():
    from ecad_core.diffusers.tiny import tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline("alpha", layers=2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_local_evaluator_keeps_each_samples_loss():
    refs = [torch.ones(1, 4, 4), torch.full((1, 4, 4), 2.0)]

    def generate(schedule):  # sample 0 is 10 % off when cached, sample 1 exact
        exact = schedule is None or schedule.bits.all()
        return [r.clone() for r in refs] if exact else [refs[0] * 1.1, refs[1].clone()]

    ev = LocalEvaluator(generate)
    losses = ev.evaluate([Schedule.every_n(PIX, 6, 2), Schedule.full(PIX, 6)])
    assert ev.last_sample_losses == [[pytest.approx(0.01), 0.0], [0.0, 0.0]]
    assert losses == [pytest.approx(0.005), 0.0] and losses[0] == np.mean(ev.last_sample_losses[0])


def test_local_evaluator_on_tiny_pixart(pixart, tmp_path):
    lay = make_layout("pixart", 2)
    gen = diffusers_generate_fn(pixart, ["a red cat on a mat", "a blue dog"], [0, 1], 5, 4.5, 64, 64)
    assert gen.sample_prompts == ["a red cat on a mat"] * 2 + ["a blue dog"] * 2
    ev = LocalEvaluator(gen)
    ev.prepare(tmp_path, "fp")
    assert ev.n_generate == 1 and (tmp_path / "references.pt").is_file()
    losses = ev.evaluate([Schedule.full(lay, 5), Schedule.every_n(lay, 5, 2), Schedule.every_n(lay, 5, 3)])
    assert losses[0] == 0.0 and 0 < losses[1] < losses[2] < 1
    assert ev.n_generate == 4
    # step 0 computed for every unit, every model call of the run
    for st in gen.last_stats:
        assert st.computed[0] == lay.n_units * st.calls // 5 and st.reused[0] == 0
    # references come from the search folder on resume: no full-compute run
    ev2 = LocalEvaluator(diffusers_generate_fn(pixart, ["a red cat on a mat", "a blue dog"], [0, 1], 5, 4.5, 64, 64))
    ev2.prepare(tmp_path, "fp")
    assert ev2.n_generate == 0
    assert ev2.evaluate([Schedule.every_n(lay, 5, 2)]) == [losses[1]]
    with pytest.raises(SearchSettingsError, match="no calibration prompts"):
        diffusers_generate_fn(pixart, [], [0], 6, 4.5, 64, 64)
    with pytest.raises(SearchSettingsError, match="no seeds"):
        diffusers_generate_fn(pixart, ["x"], [], 6, 4.5, 64, 64)


def test_local_evaluator_on_tiny_flux():
    from ecad_core.diffusers.tiny import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(double=1, single=1)
    pipe.set_progress_bar_config(disable=True)
    lay = make_layout("flux", 1, 1)
    gen = diffusers_generate_fn(pipe, ["a red cat"], [0], 4, 3.5, 64, 64)
    assert gen.description["extra_kwargs"]["max_sequence_length"] == "64"
    scheds = [Schedule.full(lay, 4), Schedule.every_n(lay, 4, 2), Schedule.every_n(lay, 4, 4)]
    full, every2, every4 = LocalEvaluator(gen).evaluate(scheds)
    assert full == 0.0 and 0 < every2 < every4

    def decode(latent):  # the seam a ComfyUI node uses: its own VAE decode of the sampler's latents
        lat = pipe._unpack_latents(latent[None], 64, 64, pipe.vae_scale_factor)
        with torch.no_grad():
            img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample[0]
        return ((img + 1) / 2).clamp(0, 1)

    ev = LocalEvaluator(gen, decode=decode, space="ssim")
    full, every2, _ = ev.evaluate(scheds)
    assert full == pytest.approx(0.0, abs=1e-12) and every2 > 0
    assert ev.references()[0].shape == (3, 64, 64)


# -- CLI -------------------------------------------------------------------------------------
def test_cli_evolve_with_screening(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat on a mat\n")
    out = tmp_path / "search"
    args = ["evolve", "--model", "tiny:pixart-alpha", "--prompts", prompts, "--steps", 4, "--height", 64]
    args += ["--width", 64, "--population", 4, "--generations", 2, "--out", out, "--quiet"]
    assert cli(args + ["--screening", 5, "--evaluated-per-generation", 2]) == 0
    summary = json.loads(capsys.readouterr().out)
    progress = json.loads((out / "progress.json").read_text())
    assert [h["evaluated"] for h in progress["history"]][1:] == [2, 2]
    assert summary["sampling_runs"] == 1 + 3 + 2 + 2  # reference, 4 seeds but no-cache, then 2 per generation
    # a resume with screening off is refused, naming it
    assert cli(args) == 2 and "screening" in capsys.readouterr().out


def test_cli_generate_runs_a_subset_of_samples(pixart):
    from ecad_core.cli.search import SampleSubsets

    lay = make_layout("pixart", 2)
    gen = SampleSubsets(diffusers_generate_fn(pixart, ["a red cat on a mat", "a blue dog"], [0, 1], 4, 4.5, 64, 64))
    sched = Schedule.every_n(lay, 4, 2)
    full = gen(sched)
    calls = gen.calls
    sub = gen(sched, samples=[3, 0])  # (blue dog, seed 1), (red cat, seed 0): one pipeline call per seed
    assert gen.calls == calls + 2 and len(sub) == 2
    torch.testing.assert_close(sub[0], full[3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sub[1], full[0], rtol=1e-4, atol=1e-5)
    assert gen.prompts == ["a red cat on a mat", "a blue dog"] and gen.seeds == [0, 1]  # restored
    ev = LocalEvaluator(gen)
    ev.evaluate([sched])
    per = ev.last_sample_losses[0]
    assert ev.evaluate_samples([sched], [3]) == [[pytest.approx(per[3], rel=1e-3)]]


def test_cli_evolve_with_racing(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat on a mat\na blue dog\n")
    out = tmp_path / "search"
    args = ["evolve", "--model", "tiny:pixart-alpha", "--prompts", prompts, "--steps", 4, "--height", 64]
    args += ["--width", 64, "--population", 4, "--generations", 3, "--out", out, "--quiet", "--seeds-per-prompt", 2]
    assert cli(args + ["--racing", 1]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (out / "racing.json").is_file()
    racing = json.loads((out / "racing.json").read_text())
    # every image counted: 4 per full evaluation, 1 per raced-out one, plus the reference's 4 and the unit
    # probe's 4 (on by default)
    raced = len(racing["raced"])
    assert summary["raced_out"] == raced
    assert summary["probe_images"] == 4
    assert summary["images_sampled"] == 4 + 4 + racing["images"]
    assert racing["images"] == 4 * len(racing["pairs"]) + raced
    assert len(summary["front"]) >= 1
    # a resume with racing off is refused, naming it
    assert cli(args) == 2 and "racing" in capsys.readouterr().out


def test_cli_evolve_and_run(tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"id": "1", "prompt": "a red cat on a mat"}, {"id": "2", "prompt": "a dog"}]))
    out = tmp_path / "search"
    args = [
        "evolve",
        "--model",
        "tiny:pixart-alpha",
        "--prompts",
        prompts,
        "--num-prompts",
        1,
        "--steps",
        4,
        "--height",
        64,
        "--width",
        64,
        "--population",
        4,
        "--generations",
        2,
        "--out",
        out,
        "--quiet",
        "--target-speedup",
        1.5,
    ]
    assert cli(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["generation"] == 2 and summary["compute_model"] == "macs"
    assert summary["sampling_runs"] == summary["evaluations"]  # + the references, computed once, - no-cache
    files = sorted((out / "front").glob("*-x*.json"))
    assert len(files) == len(summary["front"]) >= 2
    for f in files:
        s = load_schedule(f)
        assert s.steps == 4 and s.layout == make_layout("pixart", 4) and s.bits[0].all()
    picked = load_schedule(out / "picked.json")
    assert picked.metrics["expected_speedup"] >= 1.5 or summary["picked"]["expected_speedup"] == max(
        p["expected_speedup"] for p in summary["front"]
    )
    # run: images + reuse stats
    img_dir = tmp_path / "images"
    assert (
        cli(
            [
                "run",
                "--model",
                "tiny:pixart-alpha",
                "--schedule",
                out / "picked.json",
                "--prompt",
                "a cat",
                "--seeds",
                0,
                1,
                "--height",
                64,
                "--width",
                64,
                "--out",
                img_dir,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "unit calls reused" in text
    from PIL import Image

    pngs = sorted(img_dir.glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).size == (64, 64)
    assert json.loads((img_dir / "run.json").read_text())["stats"][0]["reused"] > 0


def test_measured_latency_cost_times_the_units():
    from ecad_core.costs import measured_latency_cost
    from ecad_core.diffusers.tiny import tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline("alpha", layers=2)
    lay = make_layout("pixart", 2)
    runs = []

    def full():
        runs.append(1)
        pipe("a cat", num_inference_steps=3, height=64, width=64, output_type="latent")

    cost = measured_latency_cost(pipe.transformer, lay, 3, full)
    assert len(runs) == 2  # warm-up + measured
    assert cost.source == "latency" and cost.unit.shape == (3, lay.n_units)
    assert (cost.unit > 0).all() and (cost.fixed >= 0).all() and cost.info["transformer_calls"] == 3
    # the measured unit times are part of the measured transformer time
    assert cost.unit[0].sum() + cost.fixed[0] == pytest.approx(cost.info["seconds_per_step"], rel=1e-3)
    assert cost.fraction(np.ones((3, lay.n_units), bool)) == pytest.approx(1.0)
    assert cost.fraction(np.zeros((3, lay.n_units), bool)) < 1.0
    with pytest.raises(SearchSettingsError, match="4 unit modules for 6 units"):
        measured_latency_cost(pipe.transformer, lay, 3, full, unit_modules=[pipe.transformer] * 4)


def test_measured_latency_cost_times_units_as_the_cache_runs_them():
    # A unit's cost is what reusing it saves: with the cache attached, PixArt's attn1 includes the norm +
    # modulation its re-stated block builds only for a computed attn1 (a module timing leaves it out)
    import time as _time

    from ecad_core import cached
    from ecad_core.costs import measured_latency_cost
    from ecad_core.diffusers.tiny import tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline("alpha", layers=2)
    lay = make_layout("pixart", 2)
    norm1 = pipe.transformer.transformer_blocks[0].norm1
    own = norm1.forward

    def slow_norm(*a, **k):
        _time.sleep(0.05)
        return own(*a, **k)

    def sample():
        pipe("a cat", num_inference_steps=3, height=64, width=64, output_type="latent")

    def patched():
        with cached(pipe, Schedule.full(lay, 3)):
            sample()

    norm1.forward = slow_norm
    try:
        by_cache = measured_latency_cost(pipe.transformer, lay, 3, sample, run_patched=patched, warmup=False)
        by_module = measured_latency_cost(pipe.transformer, lay, 3, sample, warmup=False)
    finally:
        del norm1.forward
    assert by_cache.info["units_timed"] == "as the cache runs them" and by_module.info["units_timed"] == "modules"
    assert (by_cache.unit > 0).all() and by_cache.info["transformer_calls"] == 3
    assert by_cache.unit[0].sum() + by_cache.fixed[0] == pytest.approx(by_cache.info["seconds_per_step"], rel=1e-3)
    assert by_cache.unit[0, 0] >= 0.05 > by_module.unit[0, 0]  # block 0's attn1, per step
    # a run that never goes through the cache cannot time units one by one
    with pytest.raises(SearchSettingsError, match="6 of 6 units never ran through the cache"):
        measured_latency_cost(pipe.transformer, lay, 3, sample, run_patched=sample, warmup=False)


def test_cli_evolve_latency_objective_is_kept_for_resume(tmp_path, capsys):
    out = tmp_path / "search"
    (tmp_path / "p.txt").write_text("a red cat\n")
    args = [
        "evolve",
        "--model",
        "tiny:pixart-alpha",
        "--prompts",
        tmp_path / "p.txt",
        "--steps",
        3,
        "--height",
        64,
        "--width",
        64,
        "--population",
        4,
        "--generations",
        1,
        "--out",
        out,
        "--quiet",
        "--cost",
        "latency",
    ]
    assert cli(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compute_model"] == "latency"
    saved = (out / "latency_cost.json").read_text()
    front = json.loads((out / "front" / "front.json").read_text())
    assert front["cost"]["source"] == "latency" and front["cost"]["seconds_per_step"] > 0
    # a resume re-uses the measured costs (a new measurement would change the objective and be refused)
    args[args.index("--generations") + 1] = 2
    assert cli(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from_generation"] == 1 and summary["generation"] == 2
    assert (out / "latency_cost.json").read_text() == saved


def test_cli_errors(tmp_path, capsys):
    base = ["evolve", "--model", "tiny:pixart-alpha", "--steps", 4, "--out", tmp_path / "o"]
    assert cli(base + ["--population", 1, "--prompts", tmp_path / "p.txt"]) == 2
    assert "population must be an integer >= 2" in capsys.readouterr().out
    (tmp_path / "empty.txt").write_text("\n \n")
    assert cli(base + ["--prompts", tmp_path / "empty.txt"]) == 2
    assert "holds no prompts" in capsys.readouterr().out
    assert cli(base + ["--prompts", tmp_path / "missing.txt"]) == 2
    assert "not found" in capsys.readouterr().out
    assert cli(base) == 2
    assert "no prompts" in capsys.readouterr().out
    assert cli(base + ["--generations", 0, "--prompts", tmp_path / "empty.txt"]) == 2
    assert "generations must be" in capsys.readouterr().out


def test_load_prompts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    (tmp_path / "b.json").write_text('["x", {"id": "1", "prompt": "y"}]')
    (tmp_path / "c.tsv").write_text('Prompt\tCategory\nsay "hi"\tArts\n')
    assert load_prompts(tmp_path / "a.txt") == ["one", "two"]
    assert load_prompts(tmp_path / "b.json") == ["x", "y"]
    assert load_prompts(tmp_path / "c.tsv") == ['say "hi"']
    assert load_prompts(tmp_path / "a.txt", limit=1) == ["one"]
    (tmp_path / "d.json").write_text("[1]")
    with pytest.raises(SearchSettingsError, match="item 0"):
        load_prompts(tmp_path / "d.json")
    shipped = REPO / "prompts" / "ImageRewardPrompts.json"  # ECAD's calibration set, as the repository ships it
    assert len(load_prompts(shipped)) == 100


def test_front_files_hold_seeds_beyond_int64(tmp_path):
    # ComfyUI noise seeds reach 2**64 - 1; schedule files keep only int64 integers, so such values are strings
    class WithSeeds(Synthetic):
        def describe(self):
            return {"evaluator": "synthetic", "seeds": [2**64 - 1, 0]}

    res = run_search(WithSeeds(), PIX, 6, tmp_path, SearchSettings(population=4, generations=1, seed=2**70))
    loaded = load_front(res.front_dir)
    assert len(loaded) == len(res.front) > 0
    prov = loaded[0].schedule.provenance["search"]
    assert prov["evaluator"]["seeds"] == [str(2**64 - 1), 0] and prov["seed"] == str(2**70)
    assert json.loads((res.front_dir / "front.json").read_text())["evaluator"]["seeds"] == [2**64 - 1, 0]
