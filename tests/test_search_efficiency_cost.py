"""The benchmark's projected H100 cost of a paper-size run (bench_search_efficiency.h100_seconds) and its
accounting in the recording evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from bench import bench_search_efficiency as bse
from ecad_core import Schedule, make_layout
from ecad_core.costs import uniform_cost


def test_h100_cost_is_linear_in_the_macs_fraction_through_the_two_measured_points():
    # issue #19: 33.7 ms per image without cache, 14.2 ms with pixart-alpha-256-fastest (MACs fraction 0.2057)
    assert bse.FASTEST_FRACTION == pytest.approx(1.175355260928 / 5.713796136960) == pytest.approx(0.2057, abs=1e-4)
    assert bse.h100_seconds(1.0) == pytest.approx(100 * 0.0337)
    assert bse.h100_seconds(bse.FASTEST_FRACTION) == pytest.approx(100 * 0.0142)
    mid = (1.0 + bse.FASTEST_FRACTION) / 2
    assert bse.h100_seconds(mid) == pytest.approx(100 * (0.0337 + 0.0142) / 2)
    assert bse.h100_seconds(0.5, images=1) == pytest.approx(bse.h100_seconds(0.5) / 100)
    assert bse.h100_seconds(0.0) == pytest.approx(0.915, abs=1e-3)  # the fixed part stays
    assert bse.h100_seconds(1.5) == bse.h100_seconds(1.0) and bse.h100_seconds(-1) == bse.h100_seconds(0.0)
    # the conservative bound: every run at no-cache cost, 3,600 s / 3.37 s
    assert bse.FLAT_BOUND_RUNS == 1068


class _Inner:
    """A LocalEvaluator's surface: a reference run first, then one loss per schedule (its reused share)."""

    batch_size = None

    def __init__(self, n_samples: int):
        self.n_samples, self.n_images = n_samples, 0

    def references(self):
        if not self.n_images:
            self.n_images = self.n_samples
        return [None] * self.n_samples

    def evaluate(self, schedules):
        self.n_images += self.n_samples * len(schedules)
        return [float((~s.effective_bits()).mean()) for s in schedules]

    def evaluate_samples(self, schedules, indices):
        self.n_images += len(indices) * len(schedules)
        return [[float((~s.effective_bits()).mean())] * len(indices) for s in schedules]


def test_recording_evaluator_charges_each_run_its_projected_seconds_and_stops_at_the_h100_budget():
    layout, steps = make_layout("pixart", 2), 10
    cost = uniform_cost(layout, steps)
    e2, e5 = Schedule.every_n(layout, steps, 2), Schedule.every_n(layout, steps, 5)
    f2, f5 = cost.fraction(e2.effective_bits()), cost.fraction(e5.effective_bits())
    ref = bse.h100_seconds(1.0)
    budget = ref + bse.h100_seconds(f2) + bse.h100_seconds(f5) + 0.5 * bse.h100_seconds(f2)
    rec = bse.RecordingEvaluator(_Inner(4), cost, 1.0, budget=100, h100_budget_s=budget)
    rec.evaluate([e2, e5])
    assert rec.h100_s == pytest.approx(budget - 0.5 * bse.h100_seconds(f2))  # the reference at no-cache cost
    assert [s for s, _ in rec.curve_h100] == pytest.approx([ref + bse.h100_seconds(f2), rec.h100_s], abs=1e-3)
    rec.evaluate_samples([e2], [0, 1])  # half the samples: half a run's seconds
    assert rec.h100_s == pytest.approx(budget)
    with pytest.raises(bse.BudgetSpent):
        rec.evaluate([e2])  # past the budget: refused before sampling
    assert rec.runs == 3.5
    # the HV reached within a limit: the last point at or below it
    curve = [(1.0, 0.1), (2.0, 0.3), (3.0, 0.4)]
    assert bse._hv_within(curve, 2.5) == 0.3 and bse._hv_within(curve, 0.5) == 0.0
    assert bse._hv_within(curve, 3.0) == 0.4
    assert np.isfinite(rec.curve_h100[-1][1])


@pytest.mark.slow
def test_seeds_run_apart_merge_into_one_result_with_the_h100_accounting(tmp_path):
    import json

    import torch

    torch.set_num_threads(1)
    paths = []
    for seed in (1, 0):
        p = tmp_path / f"s{seed}.json"
        args = ["--quick", "--families", "pixart", "--variants", "probe", "--search-seeds", str(seed)]
        bse.main([*args, "--h100-budget", "40", "--out", str(p)])
        paths.append(str(p))
    out = tmp_path / "merged.json"
    bse.main(["--merge", *paths, "--out", str(out)])
    r = json.loads(out.read_text())
    (m,) = r["models"]
    v = m["variants"]["probe"]
    assert [s["seed"] for s in v["seeds"]] == [0, 1] and r["setup"]["search_seeds"] == [0, 1]
    for s in v["seeds"]:
        assert s["h100_s"] <= 40 and s["curve_h100"][-1][0] <= 40
        assert s["hv_h100_hour"] == s["hv_final"]  # the whole (40 s) search lies within the hour
    assert v["median_hv_h100_hour"] == pytest.approx(np.median([s["hv_h100_hour"] for s in v["seeds"]]))
    assert out.with_suffix(".png").stat().st_size > 0
