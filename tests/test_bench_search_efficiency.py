"""The search-efficiency benchmark (bench/bench_search_efficiency.py) in its quick mode, with a second search
variant plugged in the way part B's variants will be."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench import bench_search_efficiency as bse
from bench import trained
from ecad_core import Schedule
from ecad_core.costs.compute import cost_for_transformer
from ecad_core.search import LocalEvaluator, SearchSettings, run_search

pytestmark = pytest.mark.slow


def test_quick_mode_writes_curves_fronts_and_baselines(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    calls = []

    def random_search(ctx: bse.SearchContext) -> None:
        """A new variant in a few lines: random genomes until the budget is spent."""
        rng = np.random.default_rng(ctx.seed)
        while True:
            x = rng.random(ctx.space.length) < 0.5
            calls.append(ctx.evaluator.evaluate([ctx.space.decode(x, name="random")]))

    monkeypatch.setitem(bse.VARIANTS, "random", random_search)
    out = tmp_path / "r.json"
    bse.main(["--quick", "--families", "pixart", "--variants", "nsga2", "random", "--out", str(out)])
    r = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    (m,) = r["models"]
    budget = r["setup"]["budget"]
    for name in ("nsga2", "random"):
        (s,) = m["variants"][name]["seeds"]
        # the reference run and one run per schedule, never past the budget (random search spends all of it)
        assert s["runs"] <= budget if name == "nsga2" else s["runs"] == budget
        hv = [h for _, h in s["curve"]]
        assert (
            hv == sorted(hv) and hv[-1] == pytest.approx(s["hv_final"], abs=1e-6) and hv[-1] > 0
        )  # the archive's HV never falls
        assert s["front"] and all(p["loss_held"] >= 0 and 0 < p["fraction"] <= 1 for p in s["front"])
    assert len(calls) == budget - 1
    for kind in ("every-n", "fbcache", "teacache"):
        rows = m["baselines"][kind]
        assert [r["knob"] for r in rows] == list(r["setup"][{"every-n": "every_n"}.get(kind, kind)])
        assert all(0 < row["fraction_held"] <= 1 for row in rows)
        assert s["hv_held"] > 0
    cmp_rows = m["comparison"]["nsga2"]
    assert {c["baseline"] for c in cmp_rows} == {"every-n", "fbcache", "teacache"}


def test_probe_variant_charges_its_run_and_beats_nsga2_on_the_trained_pixart(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "p.json"
    bse.main(["--quick", "--families", "pixart", "--variants", "nsga2", "probe", "--out", str(out)])
    (m,) = json.loads(out.read_text())["models"]
    (plain,) = m["variants"]["nsga2"]["seeds"]
    (probe,) = m["variants"]["probe"]["seeds"]
    # the first schedule is recorded after the reference run (nsga2), after the reference and the probe's run (probe)
    assert plain["curve"][0][0] == 2 and probe["curve"][0][0] == 3
    assert probe["runs"] <= 25 and probe["images"] == 2 * probe["runs"]  # 2 calibration samples per run
    # deterministic here: the probe's rows beat today's search at its full (quick) budget, within it
    assert probe["hv_final"] > plain["hv_final"] + 0.02
    assert m["variants"]["probe"]["median_runs_to_final_of"]["nsga2"] < plain["runs"]


def test_unknown_variant_is_refused(capsys):
    with pytest.raises(SystemExit):
        bse.main(["--quick", "--variants", "nope"])
    assert "unknown search variant(s) ['nope']" in capsys.readouterr().err


def test_search_on_the_trained_model_improves_on_its_heuristic_seeds():
    """A short NSGA-II search on trained PixArt: at no more compute than every-3 (one of its heuristic seeds) it
    finds a schedule with a lower calibration loss. On random weights every loss is ~1e-5 and no front means
    anything; here every-3 costs a loss > 1e-3."""
    torch.set_num_threads(1)
    steps = 10
    model = trained.load("pixart")
    gen = bse.ShapesGenerate(model, "pixart", trained.CALIBRATION[:2], [0], steps)
    layout = gen.units.layout
    side = trained.cost_size("pixart")
    cost = cost_for_transformer(model, layout, steps, side, side, text_tokens=trained.MAX_TOKENS)
    ev = LocalEvaluator(gen)
    e3 = Schedule.every_n(layout, steps, 3)
    f3, l3 = cost.fraction(e3.effective_bits()), ev.evaluate([e3])[0]
    assert l3 > 1e-3
    res = run_search(ev, layout, steps, None, SearchSettings(population=8, generations=3), cost=cost)
    fast = [p.quality_loss for p in res.front if p.compute_fraction <= f3 + 1e-9]
    assert fast and min(fast) < l3
