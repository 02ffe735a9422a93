"""HunyuanVideo 1.5 at component level (issue #18) on a real ComfyUI server (v0.3.75; 0.33 in the e2e033 stage),
with the tiny stock-detected ``ecad_tiny_hunyuan_video15`` (2 double blocks: 6 units) sampling a 2-frame video
latent: all-recompute is ComfyUI's own video bit for bit on the block re-statements (no fallback), a mixed schedule
reuses exactly the units its rows reuse and changes the video by a plausible amount, the cache memory is reported
and offloading it to the CPU gives the same video, a schedule of another family is refused, Evolve and Evaluate
run on it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from test_comfy_wan import video_prompt

from comfy_harness.family_prompts import (
    apply_evolved,
    eval_json,
    evaluate_node,
    evolve_node,
    run_latent,
    schedule_dir,
    unit_stats,
)
from comfy_harness.server import PromptExecutionError
from ecad_core import Schedule, load_schedule, make_layout

pytestmark = pytest.mark.comfy
_seeds = itertools.count(18500)
MODEL = "ecad_tiny_hunyuan_video15"
LAYOUT = make_layout("hunyuan_video15", 2, 0)
STEPS = 4


@pytest.fixture(scope="module")
def hv_schedules(comfy_server):
    d = schedule_dir(comfy_server)
    Schedule.full(LAYOUT, STEPS, name="hv15-e2e-full").save(d / "hv15-e2e-full.json")
    bits = np.random.default_rng(185).random((STEPS, LAYOUT.n_units)) < 0.5
    bits[1:, :3] = False  # block 0 reused from step 1 on: something is surely reused
    Schedule(LAYOUT, bits, name="hv15-e2e-mixed").save(d / "hv15-e2e-mixed.json")
    return d


def _prompt(seed, preset=None, prefix="hv15", offload=False):
    return video_prompt(seed, preset, prefix=prefix, offload=offload, model=MODEL)


def test_hunyuan_video15_all_recompute_exact_mixed_reuses_its_rows(comfy_server, hv_schedules):
    srv = comfy_server
    seed = next(_seeds)
    start = len(srv.log_text())
    ref = run_latent(srv, _prompt(seed, prefix="hv15_ref"))
    assert ref.shape == (1, 32, 2, 4, 4)  # the temporal tokens are there
    full = run_latent(srv, _prompt(seed, "user/hv15-e2e-full", prefix="hv15_full"))
    text = srv.log_text()[start:]
    assert "to ComfyUI HunyuanVideo 1.5 (2 double blocks)" in text, text[-2000:]
    (st,) = unit_stats(text, "hv15-e2e-full")
    assert st["reused"] == 0 and st["total"] == STEPS * LAYOUT.n_units
    assert (full == ref).all(), "all-recompute schedule changed the video"
    mixed = run_latent(srv, _prompt(seed, "user/hv15-e2e-mixed", prefix="hv15_mixed"))
    text = srv.log_text()[start:]
    (st,) = unit_stats(text, "hv15-e2e-mixed")
    s = load_schedule(hv_schedules / "hv15-e2e-mixed.json")
    # CFG: cond and uncond in one batch, one call per unit and step; step 0 computes everything
    assert st["per_step"] == (~s.effective_bits()).sum(axis=1).tolist() and st["reused"] >= 3 * (STEPS - 1)
    assert st["cache_mib"] > 0 and not st["offloaded"]
    assert "block re-statement off" not in text  # FLUX's re-statements matched ComfyUI's HunyuanVideo blocks
    rel = float(((mixed.float() - ref.float()) ** 2).mean() / (ref.float() ** 2).mean())
    # the tiny random blocks add little to the stream (weights N(0, 0.02)): a small but real change
    assert np.isfinite(mixed.numpy()).all() and not (mixed == ref).all() and 0 < rel < 0.5, rel


def test_hunyuan_video15_offload_and_wrong_family(comfy_server, hv_schedules):
    srv = comfy_server
    seed = next(_seeds)
    start = len(srv.log_text())
    on_device = run_latent(srv, _prompt(seed, "user/hv15-e2e-mixed", prefix="hv15_dev"))
    offloaded = run_latent(srv, _prompt(seed, "user/hv15-e2e-mixed", prefix="hv15_off", offload=True))
    assert (offloaded == on_device).all()
    a, b = unit_stats(srv.log_text()[start:], "hv15-e2e-mixed", last=2)
    assert not a["offloaded"] and b["offloaded"] == "offloaded to cpu"
    assert a["cache_mib"] == b["cache_mib"] > 0 and a["per_step"] == b["per_step"] and a["reused"] > 0
    # a FLUX.1 preset (FLUX's units, another family) is refused naming both
    with pytest.raises(PromptExecutionError) as e:
        srv.run(_prompt(next(_seeds), "flux-dev-256-fast", prefix="hv15_wrong"), timeout=120)
    msg = str(e.value)
    assert "flux-dev-256-fast" in msg and "hunyuan" in msg.lower(), msg


def test_hunyuan_video15_evolve_and_evaluate(comfy_server, hv_schedules):
    srv = comfy_server
    p = _prompt(next(_seeds), prefix="hv15_evolved")
    p["30"] = evolve_node(STEPS, "tiny-hv15", first_seed=3, population=6, resume=True)
    apply_evolved(p, "30")
    entry = srv.run(p, timeout=600)
    report = "\n".join(entry["outputs"]["30"]["text"])
    assert "generation 1" in report, report
    front = json.loads((srv.base_dir / "models" / "ecad_schedules" / "tiny-hv15" / "front" / "front.json").read_text())
    assert front["cost"]["source"] == "macs", front["cost"]
    q = {k: v for k, v in p.items() if k in ("1", "2")}
    q["10"] = evaluate_node("user/hv15-e2e-mixed", STEPS, "ecad_eval/hv15", metrics="psnr, ssim")
    rep = eval_json(srv, srv.run(q, timeout=600))
    row = rep["rows"][1]
    assert row["label"] == "hv15-e2e-mixed" and rep["outputs"] == "latent"
    assert 0 < row["reuse_fraction"] < 1 and row["cost_model"] == "macs" and row["compute_fraction"] < 1
    assert row["metrics"]["latent_rel_mse"] > 0
