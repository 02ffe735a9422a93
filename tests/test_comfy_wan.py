"""Wan 2.1/2.2 at component level (issue #18) on a real ComfyUI server (v0.3.75; 0.33 in the e2e033 stage), with
the tiny stock-detected ``ecad_tiny_wan`` (2 blocks: 6 units) sampling a 2-frame video latent: all-recompute is
ComfyUI's own video bit for bit, a mixed schedule reuses exactly the units its rows reuse (over every frame's
tokens) and changes the video by a plausible amount, the cache memory is reported and offloading it to the CPU
gives the same video, a schedule of another family is refused naming both, Evolve and Evaluate run on Wan."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from comfy_harness import make_tiny
from comfy_harness.family_prompts import (
    apply_evolved,
    apply_schedule,
    eval_json,
    evaluate_node,
    evolve_node,
    run_latent,
    sampler_prompt,
    schedule_dir,
    unit_stats,
)
from comfy_harness.server import PromptExecutionError
from ecad_core import Schedule, load_schedule, make_layout

pytestmark = pytest.mark.comfy
_seeds = itertools.count(18000)
MODEL = "ecad_tiny_wan"
LAYOUT = make_layout("wan", 2)
STEPS = 4
FRAMES = 5  # pixel frames: 2 latent frames


@pytest.fixture(scope="module")
def wan_schedules(comfy_server):
    d = schedule_dir(comfy_server)
    Schedule.full(LAYOUT, STEPS, name="wan-e2e-full").save(d / "wan-e2e-full.json")
    bits = np.random.default_rng(18).random((STEPS, LAYOUT.n_units)) < 0.5
    bits[1:, :3] = False  # block 0 reused from step 1 on: something is surely reused
    Schedule(LAYOUT, bits, name="wan-e2e-mixed").save(d / "wan-e2e-mixed.json")
    return d


# tiny video model -> (context width, pooled width of its conditioning, empty video latent node)
VIDEO_MODELS = {
    MODEL: (make_tiny.PIXART_COND_DIM, 0, "EmptyHunyuanLatentVideo"),  # T5-XXL width; 16 channels, 8 px per latent px
    # ComfyUI's HunyuanVideo asks for a pooled output (its 1.5 has no vector_in: unused); 32 channels, 16 px
    "ecad_tiny_hunyuan_video15": (make_tiny.FLUX_CONTEXT_DIM, make_tiny.FLUX_POOLED_DIM, "EmptyHunyuanVideo15Latent"),
}


def video_prompt(
    seed: int, preset: str | None = None, prefix: str = "wan", offload: bool = False, model: str = MODEL
) -> dict:
    """Tiny text-to-video: 2 latent frames (Wan: 8x8, HunyuanVideo 1.5: 4x4), random conditioning, CFG batch,
    SaveLatent."""
    dim, pooled, latent = VIDEO_MODELS[model]
    p = sampler_prompt(
        model,
        seed,
        dim=dim,
        pooled_dim=pooled,
        latent=latent,
        latent_inputs={"width": 64, "height": 64, "length": FRAMES, "batch_size": 1},
        steps=STEPS,
        prefix=prefix,
    )
    return apply_schedule(p, preset, offload)


def test_wan_video_all_recompute_exact_mixed_reuses_its_rows(comfy_server, wan_schedules):
    srv = comfy_server
    seed = next(_seeds)
    start = len(srv.log_text())
    ref = run_latent(srv, video_prompt(seed, prefix="wan_ref"))
    assert ref.shape == (1, 16, 2, 8, 8)  # the temporal tokens are there
    full = run_latent(srv, video_prompt(seed, "user/wan-e2e-full", prefix="wan_full"))
    text = srv.log_text()[start:]
    assert "to ComfyUI Wan (2 blocks); Wan: module caching" in text, text[-2000:]
    (st,) = unit_stats(text, "wan-e2e-full")
    assert st["reused"] == 0 and st["total"] == STEPS * LAYOUT.n_units
    assert (full == ref).all(), "all-recompute schedule changed the video"
    mixed = run_latent(srv, video_prompt(seed, "user/wan-e2e-mixed", prefix="wan_mixed"))
    (st,) = unit_stats(srv.log_text()[start:], "wan-e2e-mixed")
    s = load_schedule(wan_schedules / "wan-e2e-mixed.json")
    # CFG: cond and uncond in one batch, one call per unit and step; step 0 computes everything
    assert st["per_step"] == (~s.effective_bits()).sum(axis=1).tolist() and st["reused"] >= 3 * (STEPS - 1)
    # the cache held every frame's tokens: per unit a [2 (CFG), 2 frames x 4 x 4 tokens, 128] fp16/fp32 output
    assert st["cache_mib"] > 0 and not st["offloaded"]
    rel = float(((mixed.float() - ref.float()) ** 2).mean() / (ref.float() ** 2).mean())
    assert np.isfinite(mixed.numpy()).all() and 1e-9 < rel < 0.5, rel


def test_wan_offload_cache_to_cpu_same_video(comfy_server, wan_schedules):
    srv = comfy_server
    seed = next(_seeds)
    start = len(srv.log_text())
    on_device = run_latent(srv, video_prompt(seed, "user/wan-e2e-mixed", prefix="wan_dev"))
    offloaded = run_latent(srv, video_prompt(seed, "user/wan-e2e-mixed", prefix="wan_off", offload=True))
    assert (offloaded == on_device).all()
    a, b = unit_stats(srv.log_text()[start:], "wan-e2e-mixed", last=2)
    assert not a["offloaded"] and b["offloaded"] == "offloaded to cpu"
    assert a["cache_mib"] == b["cache_mib"] > 0 and a["per_step"] == b["per_step"] and a["reused"] > 0


def test_wrong_family_schedules_are_refused_on_wan_and_wan_on_others(comfy_server, wan_schedules):
    srv = comfy_server
    with pytest.raises(PromptExecutionError) as e:
        srv.run(video_prompt(next(_seeds), "pixart-alpha-256-fast", prefix="wan_wrong"), timeout=120)
    msg = str(e.value)
    assert "pixart-alpha-256-fast" in msg and "wan" in msg.lower(), msg
    # a Wan schedule on FLUX
    p = video_prompt(next(_seeds), "user/wan-e2e-mixed", prefix="wan_on_flux")
    p["1"]["inputs"]["unet_name"] = make_tiny.file_name("ecad_tiny_flux_dev")
    with pytest.raises(PromptExecutionError) as e:
        srv.run(p, timeout=120)
    assert "wan-e2e-mixed" in str(e.value) and "flux" in str(e.value).lower(), str(e.value)


def test_wan_evolve_and_evaluate(comfy_server, wan_schedules):
    srv = comfy_server
    p = video_prompt(next(_seeds), prefix="wan_evolved")
    p["30"] = evolve_node(STEPS, "tiny-wan", first_seed=3, population=6, resume=True)
    apply_evolved(p, "30")
    entry = srv.run(p, timeout=600)
    report = "\n".join(entry["outputs"]["30"]["text"])
    assert "generation 1" in report, report
    front = json.loads((srv.base_dir / "models" / "ecad_schedules" / "tiny-wan" / "front" / "front.json").read_text())
    assert front["cost"]["source"] == "macs", front["cost"]  # the Wan cost model of the loaded module
    picked = re.search(r"picked: (\S+) - expected ([\d.]+)x", report)
    assert picked and float(picked.group(2)) >= 1.2, report
    # Evaluate: the mixed schedule against no cache, on latents
    q = {k: v for k, v in p.items() if k in ("1", "2")}
    q["10"] = evaluate_node("user/wan-e2e-mixed", STEPS, "ecad_eval/wan", metrics="psnr, ssim")
    rep = eval_json(srv, srv.run(q, timeout=600))
    row = rep["rows"][1]
    assert row["label"] == "wan-e2e-mixed" and rep["outputs"] == "latent"
    assert 0 < row["reuse_fraction"] < 1 and row["cost_model"] == "macs" and row["compute_fraction"] < 1
    assert row["metrics"]["latent_rel_mse"] > 0
