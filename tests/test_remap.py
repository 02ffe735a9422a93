"""The rule for where each step of a run sits on a schedule (ecad_core/schedule/remap.py): its properties over
every pair of step counts up to 40 and every slice of a trajectory, and the worked examples of
docs/schedule-format.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecad_core import Schedule, load_schedule, make_layout, remap_steps
from ecad_core.schedule.remap import Slice, source_steps, trajectory_rows

REPO = Path(__file__).resolve().parents[1]

LAY = make_layout("pixart", 1)
PAIRS = [(S, F) for S in range(1, 41) for F in range(1, 41)]


def _s(rows):
    return Schedule(LAY, np.array([[c == "1" for c in r] for r in rows]))


def _runs(col: np.ndarray) -> int:
    """Maximal runs of recomputes in a column."""
    return int(np.sum(np.diff(np.r_[0, col.astype(int)]) == 1))


def test_every_source_step_is_read_and_fewer_steps_partition_them():
    for S, F in PAIRS:
        read = [s for j in range(F) for s in source_steps(S, F, j)]
        assert all(len(source_steps(S, F, j)) for j in range(F)), (S, F)
        assert set(read) == set(range(S)), (S, F)  # no source row is skipped
        if F <= S:
            assert read == list(range(S)), (S, F)  # each row in exactly one step, in order


def test_identity_at_the_schedules_own_step_count():
    rng = np.random.default_rng(1)
    for S in range(1, 41):
        s = Schedule(LAY, rng.random((S, 3)) < 0.5)
        assert remap_steps(s, S) == s
        assert np.array_equal(trajectory_rows(s.bits, Slice(S)), s.bits)


def test_never_turns_a_recompute_into_a_reuse():
    rng = np.random.default_rng(2)
    for S, F in PAIRS:
        bits = rng.random((S, 3)) < 0.3
        rows = trajectory_rows(bits, Slice(F))
        # every recompute of the source is at a step that recomputes it
        for s, u in zip(*np.nonzero(bits)):
            assert any(rows[j, u] and s in source_steps(S, F, j) for j in range(F)), (S, F, s, u)
        # all-recompute stays all-recompute on every slice of every trajectory
        if S <= 12 and F <= 12:
            for start in range(F):
                for n in range(1, F - start + 1):
                    assert trajectory_rows(np.ones((S, 2), bool), Slice(n, start, F)).all()


def test_more_steps_keep_the_recompute_fraction_within_one_step_per_run():
    rng = np.random.default_rng(3)
    for S, F in PAIRS:
        if F < S:
            continue
        for _ in range(4):
            bits = rng.random((S, 3)) < 0.4
            rows = trajectory_rows(bits, Slice(F))
            for u in range(3):
                # a Riemann sum of the source's recompute intervals: off by less than one step per run
                err = abs(rows[:, u].sum() - bits[:, u].sum() * F / S)
                assert err < max(_runs(bits[:, u]), 1), (S, F, u, err)
            if F % S == 0:  # whole multiples repeat each row exactly
                assert np.array_equal(rows, np.repeat(bits, F // S, axis=0))


def test_a_split_run_reads_the_rows_of_the_unsplit_run():
    rng = np.random.default_rng(4)
    for S, F in PAIRS[::7]:
        bits = rng.random((S, 3)) < 0.4
        whole = trajectory_rows(bits, Slice(F))
        for cut in range(1, F):
            a = trajectory_rows(bits, Slice(cut, 0, F))
            b = trajectory_rows(bits, Slice(F - cut, cut, F))
            assert np.array_equal(np.concatenate([a, b]), whole), (S, F, cut)


def test_worked_examples():
    s = _s(["111", "100", "010", "001"])
    # 8 steps: every row twice
    assert remap_steps(s, 8).bits.tolist() == np.repeat(s.effective_bits(), 2, axis=0).tolist()
    # 2 steps: rows 0+1 and 2+3 merge
    assert remap_steps(s, 2).bits.tolist() == [[True] * 3, [False, True, True]]
    # img2img at denoise 0.5 over 2 steps: steps 2-3 of 4, rows 2 and 3 (step 0 computes: nothing cached)
    r = remap_steps(s, 2, denoise=0.5)
    assert r.bits.tolist() == [[False, True, False], [False, False, True]]
    assert r.effective_bits()[0].all()
    # ComfyUI's KSampler: int(steps / denoise), so 4 steps at 0.75 run steps 1-4 of 5
    assert Slice.from_denoise(4, 0.75) == Slice(4, 1, 5)
    # stage 2 of a 20-step split run at step 10 of a 4-step schedule: rows 2 and 3
    r = remap_steps(s, 10, start=10, total=20)
    assert r.bits.tolist() == [[False, True, False]] * 5 + [[False, False, True]] * 5


def test_all_recompute_at_denoise_below_one_stays_all_recompute():
    # the old count-keeping rule left target steps without a source step all-reuse: 12 of 24 at denoise 0.5
    s = Schedule.full(LAY, 20)
    for steps in (4, 10, 20, 28):
        for d in (0.3, 0.5, 0.75):
            assert remap_steps(s, steps, denoise=d).bits.all(), (steps, d)


def test_a_20_step_preset_keeps_its_fraction_at_28_and_50_steps():
    s = load_schedule(REPO / "schedules/pixart-alpha-256-fast.json")
    for n in (28, 50):
        r = remap_steps(s, n)
        assert r.steps == n and r.metrics == {} and r.provenance["remapped"][-1]["to_steps"] == n
        assert abs(r.recompute_fraction() - s.recompute_fraction()) < 1 / s.steps


def test_bad_arguments():
    s = _s(["111"])
    with pytest.raises(ValueError, match="steps must be"):
        remap_steps(s, 0)
    with pytest.raises(ValueError, match="denoise must be"):
        remap_steps(s, 4, denoise=1.5)
    with pytest.raises(ValueError, match=r"steps 3\.\.6 do not fit a trajectory of 5 steps"):
        remap_steps(s, 4, start=3, total=5)


def test_the_docs_picture_is_drawn_from_the_rule():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_remap_figure", REPO / "scripts/make_remap_figure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (REPO / "docs/remap.svg").read_text(encoding="utf-8") == mod.svg(), (
        "docs/remap.svg is stale: python scripts/make_remap_figure.py"
    )
    assert "remap.svg" in (REPO / "docs/schedule-format.md").read_text(encoding="utf-8")
