"""Racing over calibration samples (ecad_core/search/racing.py): a hopeless candidate stops after k samples, a
hopeful one runs them all, a raced-out one never reaches the front, nothing raced out = the plain search, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecad_core import make_layout
from ecad_core.costs.compute import uniform_cost
from ecad_core.schedule import Schedule
from ecad_core.search import (
    GenomeSpace,
    LocalEvaluator,
    SearchRun,
    SearchSettings,
    SearchSettingsError,
    genome_key,
    pareto_indices,
    run_search,
)
from ecad_core.search.racing import RACING_FILE, race_indices, raced_out

PIX = make_layout("pixart", 3)
STEPS = 8
N = 8  # calibration samples
K = 2  # run first


def _base_loss(bits: np.ndarray) -> float:
    """Early and long reuse hurt (as tests/test_search_checkpoint.py's Scored)."""
    w = np.linspace(2.0, 0.2, bits.shape[0])[:, None] * np.linspace(1.0, 2.0, bits.shape[1])[None, :]
    runs = (~bits[1:] & ~bits[:-1]).sum()
    return float(0.5 * (w * ~bits).sum() / w.sum() + 0.01 * runs)


class Gen:
    """``generate(schedule, samples=...)``: sample i's relative MSE is the schedule's base loss times a fixed
    per-sample weight; records how many samples each schedule ran."""

    def __init__(self, weight=None):
        self.refs = [torch.full((4,), float(i + 1)) for i in range(N)]
        self.weight = np.linspace(0.6, 1.4, N) if weight is None else np.asarray(weight, float)
        self.runs: dict[bytes, int] = {}  # schedule bits -> samples run

    def __call__(self, schedule, samples=None):
        idx = list(range(N)) if samples is None else list(samples)
        if schedule is None:
            return [self.refs[i].clone() for i in idx]
        key = schedule.bits.tobytes()
        self.runs[key] = self.runs.get(key, 0) + len(idx)
        base = _base_loss(schedule.effective_bits())
        # rel. MSE of r * (1 + e) against r is e^2 (latent_rel_mse)
        return [self.refs[i] * (1 + float(np.sqrt(base * self.weight[i]))) for i in idx]


class GenAll(Gen):
    """The same outputs, but generate() cannot run a subset."""

    def __call__(self, schedule):  # type: ignore[override]
        return super().__call__(schedule)


def _settings(generations=4, **kw):
    return SearchSettings(population=8, seed=3, generations=generations, **kw)


def _search(out=None, generations=4, gen=None, **kw):
    gen = gen or Gen()
    run = SearchRun(LocalEvaluator(gen), PIX, STEPS, out, _settings(generations, **kw))
    return run.run(), gen, run


def _front_sig(res):
    return [(p.quality_loss, p.compute_fraction, p.generation, p.schedule.bits.tobytes()) for p in res.front]


def test_race_indices_spread():
    assert race_indices(8, 2) == [0, 7]
    assert race_indices(16, 4) == [0, 5, 10, 15]
    assert race_indices(5, 1) == [2]
    assert race_indices(3, 5) == [0, 1, 2]


def test_bound_stops_a_clearly_bad_candidate_and_keeps_a_good_one():
    full = np.array([[0.1, 0.5], [0.02, 0.9]])  # (loss, fraction) of fully evaluated ones
    pairs = [(0.1, 0.1)] * 4  # partial means have equalled full means so far
    out = raced_out(np.array([0.5, 0.05, 0.5]), np.array([0.5, 0.5, 0.3]), full, pairs, 0.1)
    # 0.5 at 0.5 cannot beat 0.1; 0.05 can; at 0.3 nothing cheaper is known, so it is kept
    assert out.tolist() == [True, False, False]
    # too little history: nothing is raced out
    assert not raced_out(np.array([0.5]), np.array([0.5]), full, pairs[:3], 0.1).any()


def test_evaluate_samples_subset_and_images():
    gen = Gen()
    ev = LocalEvaluator(gen)
    ev.references()
    s = Schedule.every_n(PIX, STEPS, 2)
    full = ev.evaluate([s])[0]
    per = ev.last_sample_losses[0]
    assert ev.n_images == 2 * N  # the references and one run
    part = ev.evaluate_samples([s], [1, 5])[0]
    assert part == pytest.approx([per[1], per[5]], rel=1e-12)
    assert ev.n_images == 2 * N + 2  # only the two samples ran
    assert float(np.mean(per)) == pytest.approx(full)
    # a generate without samples=: the first subset runs everything, the rest of the same schedule is free
    gen2 = GenAll()
    ev2 = LocalEvaluator(gen2)
    ev2.references()
    a = ev2.evaluate_samples([s], [0, 7])[0]
    b = ev2.evaluate_samples([s], [1, 2, 3, 4, 5, 6])[0]
    assert ev2.n_images == 2 * N and ev2.n_generate == 2
    assert a + b == pytest.approx([per[0], per[7], *per[1:7]], rel=1e-12)
    # checked at each call: a generate swapped in after construction (as a wrapper may be) is used as it is
    ev3 = LocalEvaluator(Gen())
    ev3.references()
    ev3.generate = GenAll()
    assert ev3.evaluate_samples([s], [3]) == [[pytest.approx(per[3], rel=1e-12)]]
    assert ev3.n_images == 2 * N


def test_racing_stops_hopeless_candidates_after_k_samples():
    res, gen, run = _search(racing=K, racing_margin=0.0)
    raced = set(run.race.raced)
    assert res.raced_out == len(raced) > 0, "this loss should race some candidates out"
    runs_by_key = _runs_by_key(run, gen)
    for k in raced:
        assert runs_by_key[k] == K
    full = [k for k in runs_by_key if k not in raced]
    assert full and all(runs_by_key[k] == N for k in full)
    # images: every sample run counted, the reference's N excluded from the search's own count
    assert res.images == sum(gen.runs.values()) == run.evaluator.n_images - N == run.race.images
    assert res.images < N * (res.evaluations - 1)  # cheaper than running every candidate fully
    # a raced-out candidate is never on the front nor in the archive / hypervolume
    front_keys = {_key(p.schedule) for p in res.front}
    assert not front_keys & set(raced)
    assert len(res.archive) == res.evaluations - len(raced)
    for k in raced:  # ranked by its partial mean over the K race samples
        assert run.state.memo[k][0] == pytest.approx(run.race.raced[k][0])


def test_raced_out_is_never_on_the_front_even_when_its_partial_loss_looks_good():
    # the race samples (0 and 7) lose 6x less than the others: partial means flatter every candidate
    gen = Gen(weight=[0.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 0.2])
    res, gen, run = _search(gen=gen, generations=5, racing=K, racing_margin=0.0)
    raced = run.race.raced
    assert raced
    front = {_key(p.schedule) for p in res.front}
    assert not front & set(raced)
    # some raced-out partial estimate would be non-dominated among all the search's objectives
    allF = np.array([v[:2] for v in run.state.memo.values()])
    keys = list(run.state.memo)
    nd = {keys[i] for i in pareto_indices(allF)}
    assert nd & set(raced)
    # and the bound was right: each raced-out genome's true full loss is dominated by the front
    for k in raced:
        loss = _base_loss(GenomeSpace(PIX, STEPS).decode(GenomeSpace(PIX, STEPS).from_key(k)).effective_bits())
        full = loss * float(np.mean(gen.weight))
        frac = run.state.memo[k][1]
        assert any(p.quality_loss <= full and p.compute_fraction <= frac for p in res.front)


def test_nothing_raced_out_equals_the_plain_search():
    plain, pgen, _ = _search()
    # margin 0.999: the optimistic bound is a thousandth of the partial loss, nothing is raced out
    raced, gen, _ = _search(racing=K, racing_margin=0.999)
    assert raced.raced_out == 0
    assert _front_sig(raced) == _front_sig(plain)
    assert raced.archive.tobytes() == plain.archive.tobytes()
    assert raced.hypervolume == plain.hypervolume
    assert gen.runs == pgen.runs  # every candidate ran every sample once


def test_racing_resumes_to_the_uninterrupted_result(tmp_path):
    whole, _, _ = _search(tmp_path / "a", generations=4, racing=K, racing_margin=0.0)
    assert whole.raced_out > 0
    _search(tmp_path / "b", generations=2, racing=K, racing_margin=0.0)
    assert (tmp_path / "b" / RACING_FILE).is_file()
    gen = Gen()
    resumed, _, _ = _search(tmp_path / "b", generations=4, gen=gen, racing=K, racing_margin=0.0)
    assert resumed.resumed_from == 2
    assert _front_sig(resumed) == _front_sig(whole)
    assert resumed.archive.tobytes() == whole.archive.tobytes()
    assert resumed.raced_out == whole.raced_out
    a = json.loads((tmp_path / "a" / RACING_FILE).read_text())
    b = json.loads((tmp_path / "b" / RACING_FILE).read_text())
    assert a == b
    # a checkpoint of a racing search without its racing file is refused, not resumed without the marks
    (tmp_path / "b" / RACING_FILE).unlink()
    with pytest.raises(Exception, match="racing"):
        _search(tmp_path / "b", generations=5, racing=K, racing_margin=0.0)


def test_racing_cancelled_mid_generation_resumes_to_the_uninterrupted_result(tmp_path):
    kw = dict(racing=K, racing_margin=0.0)
    whole, _, _ = _search(tmp_path / "a", generations=4, **kw)
    polls = {"n": 0}

    def stop():
        polls["n"] += 1
        return polls["n"] > 20  # inside generation 2 (one schedule per evaluation call)

    gen = Gen()
    run = SearchRun(LocalEvaluator(gen), PIX, STEPS, tmp_path / "b", _settings(4, **kw), should_stop=stop)
    first = run.run()
    assert first.stopped == "cancelled" and first.generation < 4
    assert run.race.raced, "something should be raced out before the cancel"
    resumed, _, _ = _search(tmp_path / "b", generations=4, **kw)
    assert _front_sig(resumed) == _front_sig(whole)
    assert resumed.archive.tobytes() == whole.archive.tobytes()
    a = json.loads((tmp_path / "a" / RACING_FILE).read_text())
    b = json.loads((tmp_path / "b" / RACING_FILE).read_text())
    assert a["raced"] == b["raced"] and a["pairs"] == b["pairs"]


def test_racing_needs_subset_evaluation():
    class Plain:
        def evaluate(self, schedules):
            return [0.1 for _ in schedules]

    with pytest.raises(SearchSettingsError, match="racing needs"):
        run_search(Plain(), PIX, STEPS, None, _settings(racing=2))
    with pytest.raises(SearchSettingsError, match="racing"):
        _settings(racing=-1).validate()
    with pytest.raises(SearchSettingsError, match="margin"):
        _settings(racing=2, racing_margin=1.0).validate()


@pytest.mark.slow
def test_benchmark_racing_variant_counts_images(tmp_path):
    from bench import bench_search_efficiency as bse

    torch.set_num_threads(1)
    out = tmp_path / "r.json"
    bse.main(
        ["--quick", "--families", "pixart", "--variants", "racing", "--calibration-size", "8", "--budget", "40"]
        + ["--racing", "2", "--out", str(out)]
    )
    r = json.loads(out.read_text())
    assert len(r["setup"]["calibration"]) == 8 and r["setup"]["racing"] == 2
    (s,) = r["models"][0]["variants"]["racing"]["seeds"]
    # runs are images / samples; never past the budget
    assert s["images"] <= 40 * 8 and s["runs"] == pytest.approx(s["images"] / 8, abs=1e-3)
    assert s["stopped_early"] > 0  # candidates raced out after 2 of 8 samples
    assert s["sampler_calls"] > s["runs"]
    hv = [h for _, h in s["curve"]]
    assert hv == sorted(hv) and hv[-1] == pytest.approx(s["hv_final"], abs=1e-6)
    assert s["front"]


def test_recording_evaluator_archives_a_schedule_once_all_its_samples_ran():
    from bench import bench_search_efficiency as bse

    gen = Gen()
    ev = LocalEvaluator(gen)
    cost = uniform_cost(PIX, STEPS)
    rec = bse.RecordingEvaluator(ev, cost, 1.0, budget=4)
    s = Schedule.every_n(PIX, STEPS, 2)
    rec.evaluate_samples([s], [0, 7])
    assert rec.archive == [] and rec.n_images == N + 2
    rec.evaluate_samples([s], list(range(1, 7)))
    assert len(rec.archive) == 1 and rec.runs == 2
    assert rec.archive[0][0] == pytest.approx(LocalEvaluator(Gen()).evaluate([s])[0], rel=1e-12)
    rec.evaluate([Schedule.every_n(PIX, STEPS, 3)])
    rec.evaluate_samples([Schedule.every_n(PIX, STEPS, 4)], list(range(N - 1)))
    with pytest.raises(bse.BudgetSpent):  # one image short of 4 runs' budget: two more would pass it
        rec.evaluate_samples([s], [0, 1])
    rec.evaluate_samples([s], [0])
    assert rec.n_images == 4 * N


# -- helpers ------------------------------------------------------------------------------------
def _key(schedule) -> bytes:
    return genome_key(GenomeSpace(PIX, STEPS).encode(schedule))


def _runs_by_key(run: SearchRun, gen: Gen) -> dict[bytes, int]:
    """Samples run per evaluated genome (the free all-recompute one left out)."""
    space = GenomeSpace(PIX, STEPS)
    out = {}
    for k in run.state.memo:
        b = space.decode(space.from_key(k)).bits.tobytes()
        if b in gen.runs:
            out[k] = gen.runs[b]
    return out
