"""HunyuanVideo 1.5 at component level (issue #18) on a real ComfyUI server (v0.3.75; 0.33 in the e2e033 stage),
with the tiny stock-detected ``ecad_tiny_hunyuan_video15`` (2 double blocks: 6 units) sampling a 2-frame video
latent: all-recompute is ComfyUI's own video bit for bit on the block re-statements (no fallback), a mixed schedule
reuses exactly the units its rows reuse and changes the video by a plausible amount, the cache memory is reported
and offloading it to the CPU gives the same video, a schedule of another family is refused, Evolve and Evaluate
run on it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_comfy_wan import video_prompt

from comfy_harness import video_checks
from comfy_harness.server import PromptExecutionError
from ecad_core import make_layout

pytestmark = pytest.mark.comfy
_seeds = itertools.count(18500)
MODEL = "ecad_tiny_hunyuan_video15"
LAYOUT = make_layout("hunyuan_video15", 2, 0)
STEPS = 4


@pytest.fixture(scope="module")
def hv_schedules(comfy_server):
    return video_checks.save_schedules(comfy_server, LAYOUT, STEPS, "hv15", 185)


def _prompt(seed, preset=None, prefix="hv15", offload=False):
    return video_prompt(seed, preset, prefix=prefix, offload=offload, model=MODEL)


def test_hunyuan_video15_all_recompute_exact_mixed_reuses_its_rows(comfy_server, hv_schedules):
    line = "to ComfyUI HunyuanVideo 1.5 (2 double blocks)"
    ref, mixed, text = video_checks.all_recompute_and_mixed(
        comfy_server, _prompt, "hv15", next(_seeds), hv_schedules, LAYOUT.n_units, STEPS, line
    )
    assert ref.shape == (1, 32, 2, 4, 4)  # the temporal tokens are there
    assert "block re-statement off" not in text  # FLUX's re-statements matched ComfyUI's HunyuanVideo blocks
    rel = float(((mixed.float() - ref.float()) ** 2).mean() / (ref.float() ** 2).mean())
    # the tiny random blocks add little to the stream (weights N(0, 0.02)): a small but real change
    assert np.isfinite(mixed.numpy()).all() and not (mixed == ref).all() and 0 < rel < 0.5, rel


def test_hunyuan_video15_offload_and_wrong_family(comfy_server, hv_schedules):
    srv = comfy_server
    video_checks.offload_gives_the_same_video(srv, _prompt, "hv15", next(_seeds))
    # a FLUX.1 preset (FLUX's units, another family) is refused naming both
    with pytest.raises(PromptExecutionError) as e:
        srv.run(_prompt(next(_seeds), "flux-dev-256-fast", prefix="hv15_wrong"), timeout=120)
    msg = str(e.value)
    assert "flux-dev-256-fast" in msg and "hunyuan" in msg.lower(), msg


def test_hunyuan_video15_evolve_and_evaluate(comfy_server, hv_schedules):
    video_checks.evolve_and_evaluate(
        comfy_server, _prompt(next(_seeds), prefix="hv15_evolved"), "hv15", STEPS, "tiny-hv15"
    )
