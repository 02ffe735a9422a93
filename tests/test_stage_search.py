"""Searching one stage of a split run (Wan 2.2's two experts): which schedule rows the stage reads (the trajectory
rule of ecad_core/schedule/remap.py), the full-trajectory schedule a stage's search saves, and the compute of
only the stage's rows."""

from __future__ import annotations

import numpy as np
import pytest

from ecad_core import Schedule, make_layout, remap_steps
from ecad_core.costs.compute import macs_cost
from ecad_core.schedule.remap import Slice, embed_stage, stage_rows, trajectory_rows

WAN = make_layout("wan", 40)


def _stage(steps: int, seed: int = 0) -> Schedule:
    rng = np.random.default_rng(seed)
    return Schedule(WAN, rng.random((steps, WAN.n_units)) < 0.5, name="low-noise")


def test_a_stage_reads_its_own_rows_of_a_trajectory_schedule():
    # the low-noise expert of 20 steps from step 12: rows 12..19; the high-noise one rows 0..11
    assert stage_rows(20, Slice(8, 12, 20)) == list(range(12, 20))
    assert stage_rows(20, Slice(12, 0, 20)) == list(range(12))
    # a 10-row schedule on a 20-step trajectory: the second half's steps read rows 5..9
    assert stage_rows(10, Slice(10, 10, 20)) == list(range(5, 10))
    # a 40-row schedule on a 20-step trajectory: each step OR-s two rows
    assert stage_rows(40, Slice(5, 15, 20)) == list(range(30, 40))


def test_stage_rows_are_the_rows_the_run_reads():
    for S in range(1, 25):
        for F in range(1, 25):
            for start in range(F):
                for steps in range(1, F - start + 1):
                    sl = Slice(steps, start, F)
                    eye = np.eye(S, dtype=bool)
                    read = set(np.flatnonzero(trajectory_rows(eye, sl).any(axis=0)))
                    assert stage_rows(S, sl) == sorted(read), (S, sl)


@pytest.mark.parametrize("start,end", [(12, 20), (0, 12), (5, 9)])
def test_a_stage_search_plugs_into_the_stage_unchanged(start, end):
    sl = Slice(end - start, start, 20)
    stage = _stage(sl.steps)
    full = embed_stage(stage, sl)
    assert full.steps == 20 and full.layout == WAN
    outside = [r for r in range(20) if not start <= r < end]
    assert full.bits[outside].all()  # the other expert's rows: recompute
    assert (full.bits[start:end] == stage.bits).all()
    assert full.provenance["stage"] == {"start": start, "end": end, "trajectory_steps": 20}
    # the stage, run as KSamplerAdvanced start..end of 20 with the saved schedule applied, reads the searched bits
    # (its first step computes whatever its row says: nothing is cached before it)
    run = remap_steps(full, sl.steps, start=start, total=20)
    assert (run.bits[1:] == stage.bits[1:]).all()
    assert (run.effective_bits() == stage.effective_bits()).all()
    # and any other stage of the trajectory reads only recomputes where it lies outside
    if start > 0:
        assert remap_steps(full, start, start=0, total=20).bits.all()


def test_embed_stage_refuses_a_schedule_of_other_length():
    with pytest.raises(ValueError, match="has 7 rows, the stage 8 steps"):
        embed_stage(_stage(7), Slice(8, 12, 20))


def test_the_stage_cost_counts_only_its_rows():
    full_cost = macs_cost(WAN, 20, "wan2.2-t2v-a14b", 480, 832, text_tokens=512)
    sl = Slice(8, 12, 20)
    rows = stage_rows(20, sl)
    cost = full_cost.rows(rows)
    assert cost.steps == 8 and cost.info["rows"] == [12, 20, 20]
    assert cost.full == pytest.approx(full_cost.full * 8 / 20)
    stage = _stage(8, seed=3)
    eff = stage.effective_bits()  # the stage's first step always computes
    # the MACs the stage saves are the ones its full-trajectory schedule saves (first stage row forced on)
    full = embed_stage(stage.copy(bits=eff), sl)
    saved_stage = (1 - cost.fraction(stage.bits)) * cost.full
    saved_full = (1 - full_cost.fraction(full.bits)) * full_cost.full
    assert saved_stage == pytest.approx(saved_full)
    assert saved_stage > 0
    assert cost.fraction(np.ones((8, WAN.n_units), bool)) == 1.0
    # the fraction is of the stage's compute, not of the whole trajectory's
    assert cost.fraction(stage.bits) < 1 - saved_full / full_cost.full


@pytest.mark.parametrize("rows", [[], [-1, 0], [19, 20]])
def test_cost_rows_outside_the_table_are_refused(rows):
    cost = macs_cost(WAN, 20, "wan2.2-t2v-a14b", 480, 832, text_tokens=512)
    with pytest.raises(ValueError, match="are not steps of this 20-step cost table"):
        cost.rows(rows)
