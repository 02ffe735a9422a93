"""Evolve on one expert's stage of Wan 2.2's two-expert run (issue #18), on a real ComfyUI server with the tiny
stock-detected Wan (loaded twice: the high-noise and the low-noise expert): the search varies only the rows the
stage reads, the other expert's steps before the stage run once, and the saved schedule plugs into the stage's
Apply unchanged."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from test_comfy_wan import LAYOUT, video_prompt

from comfy_harness.family_prompts import evolve_node, unit_stats, without_sampler
from comfy_harness.server import PromptExecutionError
from ecad_core import load_schedule

pytestmark = pytest.mark.comfy
_seeds = itertools.count(18500)
STEPS = 6
SPLIT = 2  # the high-noise expert runs steps 0-1, the low-noise one (searched) steps 2-5


def _evolve(p: dict, **kw) -> None:
    """Evolve on the low-noise expert (loader "30") with the high-noise one (loader "1") as the other expert."""
    p["30"] = {"class_type": "UNETLoader", "inputs": dict(p["1"]["inputs"])}
    kw = {"other_model": ["1", 0], "start_at_step": SPLIT, "end_at_step": 10000, **kw}
    name = kw.pop("output_name", "tiny-wan-low-noise")
    p["31"] = evolve_node(STEPS, name, model="30", first_seed=5, population=6, resume=False, **kw)


def test_evolve_searches_the_low_noise_stage_only(comfy_server):
    srv = comfy_server
    seed = next(_seeds)
    p = video_prompt(seed, prefix="wan_stage")
    _evolve(p)
    # the two-expert run: the picked schedule applied to the low-noise expert's stage
    p["20"] = {
        "class_type": "ApplyECADSchedule",
        "inputs": {"model": ["30", 0], "preset": "off", "offload_cache_to_cpu": False, "schedule": ["31", 0]},
    }
    common = {
        "positive": ["2", 0],
        "negative": ["3", 0],
        "noise_seed": seed,
        "steps": STEPS,
        "cfg": 2.0,
        "sampler_name": "euler",
        "scheduler": "simple",
    }
    p["40"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": dict(common, model=["1", 0], add_noise="enable", latent_image=["4", 0], start_at_step=0,
                       end_at_step=SPLIT, return_with_leftover_noise="enable"),
    }  # fmt: skip
    p["41"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": dict(common, model=["20", 0], add_noise="disable", latent_image=["40", 0], start_at_step=SPLIT,
                       end_at_step=10000, return_with_leftover_noise="disable"),
    }  # fmt: skip
    p["6"]["inputs"]["samples"] = ["41", 0]
    p.pop("5")
    start = len(srv.log_text())
    entry = srv.run(p, timeout=600)
    text = srv.log_text()[start:]
    report = "\n".join(entry["outputs"]["31"]["text"])
    assert "generation 1" in report, report
    # the high-noise expert's two steps ran once (the reference and every candidate start from them)
    assert "other_model: 1 sampler call(s)" in report, report
    assert int(re.search(r"\((\d+) sampling runs here\)", report).group(1)) >= 4, report
    assert "stage: steps 2..5 of 6" in report, report
    front_dir = srv.base_dir / "models" / "ecad_schedules" / "tiny-wan-low-noise" / "front"
    info = json.loads((front_dir / "front.json").read_text())
    assert info["cost"]["source"] == "macs" and info["cost"]["rows"] == [SPLIT, STEPS, STEPS], info["cost"]
    files = sorted(f for f in front_dir.glob("*.json") if f.name != "front.json")
    assert len(files) >= 2, files
    stage_bits = []
    for f in files:
        s = load_schedule(f)
        assert s.steps == STEPS and s.layout == LAYOUT, f
        assert s.bits[:SPLIT].all(), f  # the high-noise expert's rows: recompute
        assert s.provenance["stage"] == {"start": SPLIT, "end": STEPS, "trajectory_steps": STEPS}
        stage_bits.append(s.bits[SPLIT:])
    assert any(not b.all() for b in stage_bits)  # the stage rows vary across the front
    assert len({b.tobytes() for b in stage_bits}) == len(files)
    # the picked schedule in the low-noise expert's stage reads its own rows: its reuse is the rows' reuse
    name = re.search(r"picked: (\S+) - ", report).group(1)
    (picked,) = [s for s in map(load_schedule, files) if s.name == name]
    (st,) = unit_stats(text, picked.name)
    assert st["per_step"] == [0] + (~picked.bits[SPLIT + 1 :]).sum(axis=1).tolist(), (st, picked.bits)
    assert st["reused"] > 0


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"other_model": None}, "does not cover the 6-step trajectory: connect other_model"),
        ({"start_at_step": 6}, "start_at_step 6 is not a step of the 6-step trajectory"),
        ({"start_at_step": 3, "end_at_step": 3}, "start_at_step 3 must be below end_at_step 3"),
        ({"start_at_step": 1, "end_at_step": 3}, "start_at_step 1 .. end_at_step 3: a stage in the middle"),
        ({"start_at_step": 5}, "start_at_step 5 .. end_at_step 6 is one step"),
    ],
)
def test_evolve_stage_errors_name_the_input(comfy_server, kw, message):
    p = video_prompt(next(_seeds), prefix="wan_stage_err")
    _evolve(p, output_name="tiny-wan-stage-err")
    if kw.get("other_model", 0) is None:
        del p["31"]["inputs"]["other_model"]
        kw = {}
    p["31"]["inputs"].update(kw)
    without_sampler(p)  # Evolve is an output node: it runs alone
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=300)
    assert message in str(e.value), str(e.value)[:2000]
