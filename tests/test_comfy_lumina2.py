"""Z-Image and Lumina-Image 2.0 in a real ComfyUI server (v0.3.75, and 0.33 through ``ECAD_COMFY_DIR``), on tiny
checkpoints ComfyUI's own detection loads as ``NextDiT`` (make_tiny: ``ecad_tiny_lumina2``, 2 layers of the stock
2304 width; ``ecad_tiny_zimage``, 1 layer of 3840): all-recompute is the unpatched image bit for bit, a mixed
schedule reuses exactly its scheduled units, the image moves a plausible amount, another family's or another depth's
schedule is refused by name; Evolve (analytic MACs of the loaded model) and Evaluate run on it."""

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
    last_stats,
    run_latent,
    sampler_prompt,
    schedule_dir,
)
from comfy_harness.server import PromptExecutionError
from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy
STEPS = 3
MODELS = {"ecad_tiny_lumina2": 2, "ecad_tiny_zimage": 1}  # layers
_seeds = itertools.count(7100)


@pytest.fixture(scope="module")
def schedules(comfy_server):
    d = schedule_dir(comfy_server)
    out = {}
    for model, layers in MODELS.items():
        lay = make_layout("lumina2", layers)
        Schedule.full(lay, STEPS, name=f"{model}-full").save(d / f"{model}-full.json")
        bits = np.ones((STEPS, lay.n_units), bool)
        bits[1:, ::2] = False  # every attention reused after step 0, every feed-forward computed
        bits[2, 1] = False  # and the first feed-forward at the last step
        mixed = Schedule(lay, bits, name=f"{model}-mixed")
        mixed.save(d / f"{model}-mixed.json")
        out[model] = mixed
    return out


def _prompt(model, preset, seed, prefix, size=64, **apply_inputs):
    p = sampler_prompt(
        model,
        seed,
        dim=make_tiny.LUMINA_CONTEXT_DIM,
        latent="EmptySD3LatentImage",
        latent_inputs={"width": size, "height": size, "batch_size": 1},
        steps=STEPS,
        prefix=prefix,
    )
    return apply_schedule(p, preset, **apply_inputs)


def _latent(srv, prompt):
    return run_latent(srv, prompt, timeout=600).float()


@pytest.mark.parametrize("model", list(MODELS))
def test_all_recompute_is_stock_and_mixed_reuses_its_units(comfy_server, schedules, model):
    srv = comfy_server
    seed = next(_seeds)
    ref = _latent(srv, _prompt(model, None, seed, f"{model}_ref"))
    full = _latent(srv, _prompt(model, f"user/{model}-full", seed, f"{model}_full"))
    st = last_stats(srv)
    assert st["reused"] == 0 and st["steps"] == STEPS and st["name"] == f"{model}-full"
    assert (full == ref).all(), "all-recompute schedule changed the image"
    assert "Z-Image/Lumina2: module caching" in srv.log_text()

    mixed = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, f"{model}_mixed"))
    st = last_stats(srv)
    per_step = st["calls"] // STEPS  # model calls per step (cond and uncond: batched or not)
    assert st["calls"] == per_step * STEPS and per_step >= 1
    assert st["name"] == f"{model}-mixed" and st["reused"] == per_step * int((~schedules[model].effective_bits()).sum())
    assert st["total"] == per_step * STEPS * schedules[model].layout.n_units
    # the image moves, by an amount reuse of a few units can plausibly cause (not noise, not another image)
    rel = float((mixed - ref).norm() / ref.norm())
    assert np.isfinite(mixed.numpy()).all() and 1e-4 < rel < 0.5, rel


def test_offload_cache_to_cpu_gives_the_same_image(comfy_server, schedules):
    srv, model = comfy_server, "ecad_tiny_lumina2"
    seed = next(_seeds)
    kept = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, "lumina_kept"))
    off = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, "lumina_off", offload_cache_to_cpu=True))
    assert (kept == off).all() and last_stats(srv)["reused"] > 0


def test_other_family_or_depth_is_refused_by_name(comfy_server, schedules):
    srv = comfy_server
    with pytest.raises(PromptExecutionError) as e:
        srv.run(_prompt("ecad_tiny_lumina2", "flux-dev-256-fast", next(_seeds), "wrong_family"), timeout=300)
    assert "flux-dev-256-fast" in str(e.value) and "lumina2" in str(e.value)
    # the 2-layer Lumina 2 schedule on the 1-layer Z-Image
    with pytest.raises(PromptExecutionError) as e:
        srv.run(_prompt("ecad_tiny_zimage", "user/ecad_tiny_lumina2-mixed", next(_seeds), "wrong_depth"), timeout=300)
    assert "ecad_tiny_lumina2-mixed" in str(e.value) and "2 main blocks" in str(e.value), str(e.value)


def test_evolve_and_evaluate_on_lumina2(comfy_server, schedules):
    srv, model = comfy_server, "ecad_tiny_lumina2"
    p = _prompt(model, None, 11, "evolved")
    p["30"] = evolve_node(STEPS, "tiny-lumina2", first_seed=7, population=4, resume=False)
    apply_evolved(p, "30", node="31")
    entry = srv.run(p, timeout=900)
    report = "\n".join(entry["outputs"]["30"]["text"])
    assert "stopped: generations" in report, report
    front = json.loads(
        (srv.base_dir / "models" / "ecad_schedules" / "tiny-lumina2" / "front" / "front.json").read_text()
    )
    assert front["cost"]["source"] == "macs", front["cost"]  # the loaded NextDiT's analytic MACs
    first = json.loads(
        (srv.base_dir / "models" / "ecad_schedules" / "tiny-lumina2" / "front" / front["points"][0]["file"]).read_text()
    )
    assert first["family"] == "lumina2" and first["layout"][0]["count"] == 2
    picked = re.search(r"picked: (\S+) - expected ([\d.]+)x", report)
    assert picked and re.search(rf"ECAD {re.escape(picked.group(1))}: \d+/\d+ unit calls reused", srv.log_text())

    ev = {
        "1": p["1"],
        "2": p["2"],
        "10": evaluate_node(f"user/{model}-mixed", STEPS, "ecad_eval/lumina2", metrics="psnr", prompts="a red fox"),
    }
    entry = srv.run(ev, timeout=600)
    table = "\n".join(entry["outputs"]["10"]["text"])
    assert f"| {model}-mixed |" in table, table
    rows = eval_json(srv, entry)["rows"]
    assert rows[1]["cost_model"] == "macs" and 0 < rows[1]["reuse_fraction"] < 1
    assert rows[1]["tmacs"] < rows[0]["tmacs"]
