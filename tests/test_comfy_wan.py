"""Wan 2.1/2.2 at component level (issue #18) on a real ComfyUI server (v0.3.75; 0.33 in the e2e033 stage), with
the tiny stock-detected ``ecad_tiny_wan`` (2 blocks: 6 units) sampling a 2-frame video latent: all-recompute is
ComfyUI's own video bit for bit, a mixed schedule reuses exactly the units its rows reuse (over every frame's
tokens) and changes the video by a plausible amount, the cache memory is reported and offloading it to the CPU
gives the same video, a schedule of another family is refused naming both, Evolve and Evaluate run on Wan."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from comfy_harness import make_tiny, video_checks
from comfy_harness.family_prompts import apply_schedule, sampler_prompt
from comfy_harness.server import PromptExecutionError
from ecad_core import make_layout

pytestmark = pytest.mark.comfy
_seeds = itertools.count(18000)
MODEL = "ecad_tiny_wan"
LAYOUT = make_layout("wan", 2)
STEPS = 4
FRAMES = 5  # pixel frames: 2 latent frames


@pytest.fixture(scope="module")
def wan_schedules(comfy_server):
    return video_checks.save_schedules(comfy_server, LAYOUT, STEPS, "wan", 18)


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
    line = "to ComfyUI Wan (2 blocks); Wan: module caching"
    ref, mixed, _ = video_checks.all_recompute_and_mixed(
        comfy_server, video_prompt, "wan", next(_seeds), wan_schedules, LAYOUT.n_units, STEPS, line
    )
    assert ref.shape == (1, 16, 2, 8, 8)  # the temporal tokens are there
    rel = float(((mixed.float() - ref.float()) ** 2).mean() / (ref.float() ** 2).mean())
    assert np.isfinite(mixed.numpy()).all() and 1e-9 < rel < 0.5, rel


def test_wan_offload_cache_to_cpu_same_video(comfy_server, wan_schedules):
    video_checks.offload_gives_the_same_video(comfy_server, video_prompt, "wan", next(_seeds))


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
    p = video_prompt(next(_seeds), prefix="wan_evolved")
    report = video_checks.evolve_and_evaluate(comfy_server, p, "wan", STEPS, "tiny-wan")
    picked = re.search(r"picked: (\S+) - expected ([\d.]+)x", report)
    assert picked and float(picked.group(2)) >= 1.2, report
