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
from test_comfy_harness import _read_latent

from comfy_harness import make_tiny
from comfy_harness.server import PromptExecutionError
from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy
STEPS = 3
MODELS = {"ecad_tiny_lumina2": 2, "ecad_tiny_zimage": 1}  # layers
_seeds = itertools.count(7100)


@pytest.fixture(scope="module")
def schedules(comfy_server):
    d = comfy_server.base_dir / "models" / "ecad_schedules"
    d.mkdir(parents=True, exist_ok=True)
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
    p = {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": make_tiny.file_name(model), "weight_dtype": "default"},
        },
        "2": {
            "class_type": "TestRandomConditioning",
            "inputs": {"tokens": 8, "dim": make_tiny.LUMINA_CONTEXT_DIM, "pooled_dim": 0, "seed": seed, "zero": False},
        },
        "3": {
            "class_type": "TestRandomConditioning",
            "inputs": {"tokens": 8, "dim": make_tiny.LUMINA_CONTEXT_DIM, "pooled_dim": 0, "seed": 0, "zero": True},
        },
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": STEPS,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/{prefix}"}},
    }
    if preset is not None:
        p["20"] = {
            "class_type": "ApplyECADSchedule",
            "inputs": {"model": ["1", 0], "preset": preset, "offload_cache_to_cpu": False, **apply_inputs},
        }
        p["5"]["inputs"]["model"] = ["20", 0]
    return p


def _latent(srv, prompt):
    entry = srv.run(prompt, timeout=600)
    return _read_latent(srv.output_files(entry, "latents")[0]).float()


def _last_stats(srv):
    lines = re.findall(
        r"ECAD (\S+): (\d+)/(\d+) unit calls reused.*?over (\d+) steps, (\d+) model calls", srv.log_text()
    )
    assert lines, "no ECAD statistics in the server log"
    name, reused, total, steps, calls = lines[-1]
    return {"name": name, "reused": int(reused), "total": int(total), "steps": int(steps), "calls": int(calls)}


@pytest.mark.parametrize("model", list(MODELS))
def test_all_recompute_is_stock_and_mixed_reuses_its_units(comfy_server, schedules, model):
    srv = comfy_server
    seed = next(_seeds)
    ref = _latent(srv, _prompt(model, None, seed, f"{model}_ref"))
    full = _latent(srv, _prompt(model, f"user/{model}-full", seed, f"{model}_full"))
    st = _last_stats(srv)
    assert st["reused"] == 0 and st["steps"] == STEPS and st["name"] == f"{model}-full"
    assert (full == ref).all(), "all-recompute schedule changed the image"
    assert "Z-Image/Lumina2: module caching" in srv.log_text()

    mixed = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, f"{model}_mixed"))
    st = _last_stats(srv)
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
    assert (kept == off).all() and _last_stats(srv)["reused"] > 0


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
    p["30"] = {
        "class_type": "EvolveECADSchedule",
        "inputs": {
            "model": ["1", 0],
            "positive": ["2", 0],
            "negative": ["3", 0],
            "prompts": "",
            "seeds_per_prompt": 1,
            "first_seed": 7,
            "steps": STEPS,
            "cfg": 2.0,
            "sampler_name": "euler",
            "scheduler": "simple",
            "width": 64,
            "height": 64,
            "population": 4,
            "generations": 1,
            "time_budget_minutes": 0.0,
            "quality_metric": "latent",
            "compute_objective": "macs",
            "target_speedup": 1.2,
            "output_name": "tiny-lumina2",
            "search_seed": 0,
            "resume": False,
        },
    }
    p["31"] = {
        "class_type": "ApplyECADSchedule",
        "inputs": {"model": ["1", 0], "preset": "off", "offload_cache_to_cpu": False, "schedule": ["30", 0]},
    }
    p["5"]["inputs"]["model"] = ["31", 0]
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
        "10": {
            "class_type": "EvaluateECADSchedule",
            "inputs": {
                "model": ["1", 0],
                "preset": f"user/{model}-mixed",
                "prompts": "a red fox",
                "seed": 40,
                "seeds_per_prompt": 1,
                "steps": STEPS,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "width": 64,
                "height": 64,
                "metrics": "psnr",
                "grid_rows": 1,
                "filename_prefix": "ecad_eval/lumina2",
                "positive": ["2", 0],
                "warmup": False,
            },
        },
    }
    entry = srv.run(ev, timeout=600)
    table = "\n".join(entry["outputs"]["10"]["text"])
    assert f"| {model}-mixed |" in table, table
    grid = srv.output_files(entry, "images")[0]
    rows = json.loads(grid.with_name(grid.name.replace("_grid.png", "_eval.json")).read_text())["rows"]
    assert rows[1]["cost_model"] == "macs" and 0 < rows[1]["reuse_fraction"] < 1
    assert rows[1]["tmacs"] < rows[0]["tmacs"]
