"""FLUX.2 (Klein-sized) and Chroma in a real ComfyUI server, tiny checkpoints detected by ComfyUI itself (issue #18):
all-recompute reproduces the unpatched latent exactly, a mixed schedule reuses exactly its units (run statistics),
the image moves by a plausible amount, another family's schedule is refused clearly, Evolve (MACs objective) and
Evaluate run. ComfyUI 0.3.75 detects FLUX.2 only at FLUX.2-dev's width (48 heads fixed), so the FLUX.2 server tests
run on 0.33 (scripts/test.sh e2e033); test_comfy_flux_class.py covers FLUX.2 on 0.3.75's own classes in-process."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
import torch

from comfy_harness import make_tiny
from comfy_harness.family_prompts import (
    apply_schedule,
    evaluate_node,
    evolve_node,
    last_stats,
    run_latent,
    sampler_prompt,
    schedule_dir,
    without_sampler,
)
from comfy_harness.server import DEFAULT_COMFY_DIR, PromptExecutionError
from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy
STEPS = 3
MODELS = {  # tiny model -> (family, its latent node, its layout hint, steps)
    "ecad_tiny_flux2_klein": ("flux2", "EmptyFlux2LatentImage", "flux2-klein-4b", STEPS),
    # Chroma's stock approximator (344 x 5 layers 5120 wide) costs ~10 s a step on two CPU cores: 2 steps
    "ecad_tiny_chroma": ("chroma", "EmptySD3LatentImage", "chroma", 2),
}
_seeds = itertools.count(9100)


def _skip_unloadable(model):
    if model == "ecad_tiny_flux2_klein" and make_tiny.comfy_version_of(DEFAULT_COMFY_DIR) == "0.3.75":
        pytest.skip("ComfyUI 0.3.75 loads FLUX.2 only 6144 wide (48 heads fixed); run on 0.33 (e2e033)")


def _prompt(model, seed, preset=None, prefix="fc", size=64, **apply_inputs):
    _, latent, _, steps = MODELS[model]
    # ComfyUI 0.3.75's Chroma asks its conditioning for a pooled output (CLIPTextEncode gives one) and ignores it
    pooled = make_tiny.FLUX_POOLED_DIM if model == "ecad_tiny_chroma" else 0
    p = sampler_prompt(
        model,
        seed,
        dim=make_tiny.FLUX_CONTEXT_DIM,
        pooled_dim=pooled,
        latent=latent,
        latent_inputs={"width": size, "height": size, "batch_size": 1},
        steps=steps,
        cfg=1.0,  # one model call per step (Chroma's approximator is the costly part on the CPU)
        prefix=prefix,
    )
    return apply_schedule(p, preset, **apply_inputs)


@pytest.fixture(scope="module")
def schedules(comfy_server):
    d = schedule_dir(comfy_server)
    out = {}
    for model, (family, _, hint, steps) in MODELS.items():
        lay = make_layout(family, 1, 1)  # make_tiny: 1 double + 1 single block
        Schedule.full(lay, steps, name=f"{model}-full", model=hint).save(d / f"{model}-full.json")
        bits = np.ones((steps, lay.n_units), bool)
        bits[1:, 0] = False  # double attention reused from step 1 on
        bits[1, 3:5] = False  # single attention and MLP input reused at step 1
        bits[-1, 2] = bits[-1, 5] = False  # text MLP and single output projection reused at the last step
        mixed = Schedule(lay, bits, name=f"{model}-mixed", model=hint)
        mixed.save(d / f"{model}-mixed.json")
        out[model] = int((~mixed.effective_bits()).sum())
    return out


@pytest.mark.parametrize("model", list(MODELS))
def test_all_recompute_exact_mixed_reuses_expected_units(comfy_server, schedules, model):
    _skip_unloadable(model)
    srv = comfy_server
    seed = next(_seeds)
    ref = run_latent(srv, _prompt(model, seed, prefix=f"{model}_ref"))
    full = run_latent(srv, _prompt(model, seed, f"user/{model}-full", prefix=f"{model}_full"))
    st = last_stats(srv)
    steps = MODELS[model][3]
    assert st["reused"] == 0 and st["steps"] == steps and st["name"] == f"{model}-full"
    assert torch.equal(full, ref), "all-recompute schedule changed the latent"
    mixed = run_latent(srv, _prompt(model, seed, f"user/{model}-mixed", prefix=f"{model}_mixed"))
    st = last_stats(srv)
    per_step = st["calls"] // st["steps"]
    assert st["reused"] == schedules[model] * per_step and st["total"] == 6 * steps * per_step, st
    rel = ((mixed.float() - ref.float()).norm() / ref.float().norm()).item()
    # random weights: the tiny FLUX.2 moves its latent little, the 3072-wide Chroma a lot; a cached run moves it,
    # by less than the latent's own size
    assert torch.isfinite(mixed).all() and 1e-6 < rel < 1.0, rel
    label = {"flux2": "FLUX.2", "chroma": "Chroma"}[MODELS[model][0]]
    assert f"ComfyUI {label} (" in srv.log_text()


@pytest.mark.parametrize(
    "model, preset, kind",
    [
        ("ecad_tiny_flux2_klein", "flux-dev-256-fast", "ComfyUI FLUX.2 ("),  # FLUX.1's preset on FLUX.2
        ("ecad_tiny_chroma", "flux-dev-256-fast", "ComfyUI Chroma ("),
        ("ecad_tiny_flux_dev", "user/ecad_tiny_chroma-mixed", "ComfyUI FLUX ("),  # and the other way round
    ],
)
def test_another_familys_schedule_is_refused(comfy_server, schedules, model, preset, kind):
    _skip_unloadable(model)
    if model == "ecad_tiny_flux_dev":
        p = _prompt("ecad_tiny_chroma", next(_seeds), preset, prefix="fc_wrong")
        p["1"]["inputs"]["unet_name"] = make_tiny.file_name(model)
        p["4"]["class_type"] = "EmptySD3LatentImage"
        p["2"]["inputs"]["pooled_dim"] = p["3"]["inputs"]["pooled_dim"] = make_tiny.FLUX_POOLED_DIM
    else:
        p = _prompt(model, next(_seeds), preset, prefix="fc_wrong")
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    msg = str(e.value)
    assert preset.split("/")[-1] in msg and kind in msg, msg[:2000]  # names the schedule and the model


# Chroma at the smallest settings that still search and evaluate for real: its stock approximator runs 344 vectors
# through 5 layers 5120 wide on every model call (ComfyUI's detection fixes it), so each call costs seconds on the CPU
EVOLVE = {  # tiny model -> (population, text tokens the cost model counts)
    "ecad_tiny_flux2_klein": (3, 512),  # ComfyUI pads FLUX.2's prompt to 512 tokens
    "ecad_tiny_chroma": (2, 8),
}


@pytest.mark.parametrize("model", list(EVOLVE))
def test_evolve_and_evaluate(comfy_server, schedules, model):
    from test_comfy_eval import _report as eval_report
    from test_comfy_evolve import _report, _search_dir

    _skip_unloadable(model)
    if (
        model == "ecad_tiny_chroma"
        and make_tiny.comfy_version_of(DEFAULT_COMFY_DIR) == "0.3.75"
        and not os.environ.get("ECAD_SLOW_WORKFLOWS")
    ):
        # ~2 minutes on a CPU per ComfyUI version; the adapter is the same code on both
        pytest.skip("Chroma's search runs on ComfyUI 0.33 (e2e033); ECAD_SLOW_WORKFLOWS=1 runs it on 0.3.75 too")
    family, _, hint, steps = MODELS[model]
    population, text_tokens = EVOLVE[model]
    srv = comfy_server
    p = without_sampler(_prompt(model, 5, prefix="fc_evolve"))
    name = f"tiny-{family}"
    p["30"] = evolve_node(steps, name, first_seed=7, population=population, resume=True, cfg=1.0, target_speedup=0.0)
    entry = srv.run(p, timeout=600)
    front = json.loads((_search_dir(srv, f"tiny-{family}") / "front" / "front.json").read_text())
    assert front["cost"]["source"] == "macs" and front["cost"]["arch"] == hint, front["cost"]
    assert front["cost"]["text_tokens"] == text_tokens, front["cost"]
    assert front["layout"].startswith(family) and "picked:" in _report(entry, "30")
    p = without_sampler(_prompt(model, 6, prefix="fc_eval"))
    p["10"] = evaluate_node(
        f"user/{model}-mixed", steps, f"ecad_eval/{family}", metrics="psnr", cfg=1.0, negative=["3", 0]
    )
    _table, report, _ = eval_report(srv, srv.run(p, timeout=600))
    row = report["rows"][1]
    assert row["label"] == f"{model}-mixed" and 0 < row["reuse_fraction"] < 1, row
    assert row["cost_model"] == "macs", row
