"""The GPU suite's re-timing groups, checked without a GPU (``--plan``: the plan, nothing run)."""

from __future__ import annotations

import json

import pytest

from bench import gpu_suite

VERSION_KEYS = {"gpu", "driver", "torch", "cuda", "diffusers", "comfyui"}


@pytest.mark.parametrize("group", ["quoted-a", "quoted-b"])
def test_each_quoted_parts_estimated_time_fits_one_lease(group, tmp_path):
    """The plan (no GPU): each quoted part's sections, their ESTIMATED seconds (gpu_suite.expected_s, scaled from
    earlier H100 sections, not measured) within the lease budget, and the versions recorded."""
    suite = gpu_suite.main(["--out", str(tmp_path), "--only", group, "--plan"])
    p = suite["plan"]
    assert [r["section"] for r in p] == gpu_suite.GROUPS[group]
    assert all(r["fits"] for r in p)  # nothing quoted is skipped for time
    assert sum(r["expected_s"] for r in p) <= gpu_suite.QUOTED_BUDGET_S
    # the reference variants are left out; the quoted rows are timed at the group's rounds
    for r in p:
        if r["argv"][:1] == ["--model"] or "--variant" in r["argv"]:
            assert "--no-any-module" in r["argv"]
    written = json.loads((tmp_path / "plan.json").read_text())
    assert written["plan"] == p and not written["sections"]
    assert VERSION_KEYS <= set(written["hardware"])


def test_every_quoted_row_has_a_section():
    names = {s[0] for s in gpu_suite.sections(False, gpu_suite.QUOTED_ROUNDS)}
    assert set(gpu_suite.QUOTED.values()) <= names
    assert set(gpu_suite.GROUPS["quoted"]) == set(gpu_suite.QUOTED.values())


def test_plan_skips_what_does_not_fit():
    todo = [("a", None, [], 100.0), ("b", None, [], 300.0), ("c", None, [], 50.0)]
    p = gpu_suite.plan(todo, 200.0)
    assert [r["fits"] for r in p] == [True, False, True]
    assert "over budget" in gpu_suite.format_plan(p, 200.0)


def test_missed_targets_names_each_variant_below_its_target_at_1024():
    def v(kind, **kw):
        return {"kind": kind, "median_ms": 1.0, "spread_pct": 0.0, **kw}

    suite = {
        "hardware": {"gpu": "test"},
        "sections": {
            "diffusers_alpha_1024": {
                "variants": {
                    "engine fast": v("engine", of_ceiling=0.96),
                    "engine fastest": v("engine", of_ceiling=0.94),
                    "all-recompute": v("recompute", overhead_pct=1.4),
                    "graphs fast": v("graphs", of_ceiling=0.5),  # graph rows have their own reference
                    "graphs ceiling fast": v("graphs-ceiling"),  # that reference: never judged
                }
            },
            "comfy_flux_1024": {"variants": {"all-recompute": v("recompute", overhead_pct=0.6)}},
            "diffusers_alpha_256": {"variants": {"engine fast": v("engine", of_ceiling=0.5)}},  # launch-bound
        },
        "skipped": [],
        "errors": {},
    }
    missed = gpu_suite.missed_targets(suite)
    assert len(missed) == 2
    assert "diffusers_alpha_1024: engine fastest at 0.940 of the ceiling" in missed[0]
    assert "diffusers_alpha_1024: all-recompute +1.4% against no cache" in missed[1]
    suite["targets_missed"] = missed
    assert gpu_suite.summary(suite).count("TARGET MISSED") == 2
