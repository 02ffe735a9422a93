"""Evaluate ECAD Schedule in a real ComfyUI v0.3.75 server, on the tiny stock-detected PixArt-α checkpoint."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image
from support.eval_metric_weights import write_clip, write_imagereward, write_lpips

from comfy_harness import make_tiny
from comfy_harness.server import PromptExecutionError
from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy
STEPS = 4
MODEL = "ecad_tiny_pixart_alpha"
LAYOUT = make_layout("pixart", 2)  # make_tiny: PixArt depth 2


@pytest.fixture(scope="module")
def eval_setup(comfy_server):
    d = comfy_server.base_dir / "models" / "ecad_schedules"
    d.mkdir(parents=True, exist_ok=True)
    bits = np.random.default_rng(3).random((STEPS, LAYOUT.n_units)) < 0.4
    Schedule(LAYOUT, bits, name="eval-mixed").save(d / "eval-mixed.json")
    Schedule.full(LAYOUT, STEPS, name="eval-full").save(d / "eval-full.json")
    Schedule.full(make_layout("flux", 1, 1), STEPS, name="eval-flux-full").save(d / "eval-flux-full.json")
    # metric weights live in models/ecad_metrics (the node reads nothing outside ComfyUI's folders); the
    # node gets them as paths relative to it
    w = comfy_server.base_dir / "models" / "ecad_metrics"
    paths = {
        "lpips": write_lpips(w / "lpips"),
        "clip": write_clip(w / "clip"),
        "imagereward": write_imagereward(w / "imagereward"),
    }
    return {k: str(v.relative_to(w)) for k, v in paths.items()}


def _prompt(inputs: dict, vae: bool = True, schedule_input: str | None = None, model: str = MODEL) -> dict:
    flux = "flux" in model
    dim, pooled = (make_tiny.FLUX_CONTEXT_DIM, make_tiny.FLUX_POOLED_DIM) if flux else (make_tiny.PIXART_COND_DIM, 0)
    p = {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": make_tiny.file_name(model), "weight_dtype": "default"},
        },
        "2": {
            "class_type": "TestRandomConditioning",
            "inputs": {"tokens": 8, "dim": dim, "pooled_dim": pooled, "seed": 1, "zero": False},
        },
        "10": {
            "class_type": "EvaluateECADSchedule",
            "inputs": {
                "model": ["1", 0],
                "preset": "user/eval-mixed",
                "prompts": "a red fox in the snow\na lighthouse",
                "seed": 40,
                "seeds_per_prompt": 1,
                "steps": STEPS,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "width": 512,
                "height": 32,
                "metrics": "all",
                "grid_rows": 2,
                "filename_prefix": "ecad_eval/test",
                "positive": ["2", 0],
                **inputs,
            },
        },
    }
    if vae:
        p["3"] = {"class_type": "VAELoader", "inputs": {"vae_name": make_tiny.file_name("ecad_tiny_taesd_4ch")}}
        p["10"]["inputs"]["vae"] = ["3", 0]
    if schedule_input:
        p["4"] = {"class_type": "LoadECADSchedule", "inputs": {"schedule_file": schedule_input}}
        p["10"]["inputs"]["schedule"] = ["4", 0]
    return p


def _report(srv, entry) -> tuple[str, dict, list]:
    table = "\n".join(entry["outputs"]["10"]["text"])
    grids = srv.output_files(entry, "images")
    assert len(grids) == 1 and grids[0].name.endswith("_grid.png"), entry["outputs"]["10"]
    report = json.loads(grids[0].with_name(grids[0].name.replace("_grid.png", "_eval.json")).read_text())
    return table, report, grids


def test_evaluate_node_table_files_and_skipped_metrics(comfy_server, eval_setup):
    srv = comfy_server
    assert "EvaluateECADSchedule" in srv.object_info()
    entry = srv.run(
        _prompt(
            {
                "lpips_weights": eval_setup["lpips"],
                "clip_score_weights": eval_setup["clip"],
                "imagereward_weights": eval_setup["imagereward"],
            }
        ),
        timeout=600,
    )
    table, report, grids = _report(srv, entry)
    assert "| no cache |" in table and "| eval-mixed |" in table, table
    # no Inception weights given: skipped with its reason, shown as n/a
    assert "fid skipped: FID needs local Inception weights" in table, table
    assert "imagereward skipped:" not in table and set(report["skipped"]) == {"fid"}, report["skipped"]
    nocache, mixed = report["rows"]
    # fidelity of the no-cache row to itself does not apply; a skipped metric is n/a, never 0
    assert nocache["metrics"]["psnr"] == "—" and nocache["metrics"]["fid"] == "—"
    m = mixed["metrics"]
    assert isinstance(m["psnr"], float) and 0 < m["ssim"] <= 1 and m["lpips"] >= 0 and m["fid"] == "n/a"
    assert isinstance(m["clip"], float) and isinstance(nocache["metrics"]["clip"], float)
    # ImageReward (tiny local checkpoint) scored for both rows
    assert isinstance(m["imagereward"], float) and isinstance(nocache["metrics"]["imagereward"], float)
    # the schedule really reused units; MACs from the search's analytic cost model of the loaded model
    assert 0 < mixed["reuse_fraction"] < 1 and mixed["cost_model"] == "macs"
    assert mixed["compute_fraction"] < 1 and mixed["tmacs"] < nocache["tmacs"]
    assert [s["seed"] for s in report["samples"]] == [40, 41]
    assert [s["prompt"] for s in report["samples"]] == ["a red fox in the snow", "a lighthouse"]
    for ext in ("csv", "md"):
        assert grids[0].with_name(grids[0].name.replace("_grid.png", f"_eval.{ext}")).is_file()
    with Image.open(grids[0]) as im:  # no cache | schedule | diff, 2 rows of 512x32 under a caption strip
        assert im.size == (3 * 512 + 2 * 2, 14 + 2 * 32 + 2)


@pytest.mark.parametrize("model,name", [(MODEL, "eval-full"), ("ecad_tiny_flux_dev", "eval-flux-full")])
def test_full_compute_schedule_input_on_latents_is_identical(comfy_server, eval_setup, model, name):
    inputs = {"metrics": "psnr, ssim", "prompts": "", "warmup": False}
    if "flux" in model:  # FLUX: distilled guidance, 16-channel latents made from the empty latent
        inputs.update(cfg=1.0, scheduler="simple", width=128, height=128)
    entry = comfy_server.run(_prompt(inputs, vae=False, schedule_input=f"user/{name}", model=model), timeout=600)
    table, report, _ = _report(comfy_server, entry)
    row = report["rows"][1]
    assert row["label"] == name and row["reuse_fraction"] == 0
    # no VAE: fidelity on latents; all-recompute reproduces the no-cache samples exactly (same noise)
    assert report["outputs"] == "latent" and row["metrics"] == {"latent_rel_mse": 0.0}
    assert math.isclose(row["compute_fraction"], 1.0)
    assert "latent rel. MSE" in table and report["samples"] == [{"prompt": None, "seed": 40}]


def test_bad_inputs_are_clear_node_errors(comfy_server, eval_setup):
    p = _prompt({})
    del p["10"]["inputs"]["positive"]
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    assert "connect a CLIP" in str(e.value)
    # an already patched MODEL would make the "no cache" row cached too
    p = _prompt({})
    p["20"] = {
        "class_type": "ApplyECADSchedule",
        "inputs": {"model": ["1", 0], "preset": "user/eval-mixed", "offload_cache_to_cpu": False},
    }
    p["10"]["inputs"]["model"] = ["20", 0]
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    assert "already has an ECAD schedule applied" in str(e.value)
    # a schedule for another model is refused before sampling
    p = _prompt({"preset": "flux-dev-256-fast"})
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    assert "flux-dev-256-fast" in str(e.value)


def test_prompts_through_a_text_encoder_on_sd3(comfy_server, eval_setup):
    """Prompt lines encoded by a real (tiny) ComfyUI CLIP; the same seeds for every prompt."""
    d = comfy_server.base_dir / "models" / "ecad_schedules"
    lay = make_layout("sd3", 1, 1)  # make_tiny: SD3 depth 2 (one joint block + the last one)
    Schedule.every_n(lay, STEPS, 2, name="eval-sd3-every2").save(d / "eval-sd3-every2.json")
    p = _prompt(
        {
            "preset": "user/eval-sd3-every2",
            "prompts": "a red fox in the snow\na lighthouse",
            "seeds_per_prompt": 2,
            "metrics": "psnr",
            "scheduler": "simple",
            "width": 128,
            "height": 128,
            "warmup": False,
        },
        vae=False,
        model="ecad_tiny_sd3",
    )
    del p["10"]["inputs"]["positive"]
    p["2"] = {"class_type": "TestTinyCLIP", "inputs": {"hidden": make_tiny.FLUX_CONTEXT_DIM, "seed": 0}}
    p["10"]["inputs"]["clip"] = ["2", 0]
    entry = comfy_server.run(p, timeout=600)
    _table, report, _ = _report(comfy_server, entry)
    assert [(s["prompt"], s["seed"]) for s in report["samples"]] == [
        ("a red fox in the snow", 40),
        ("a red fox in the snow", 41),
        ("a lighthouse", 40),
        ("a lighthouse", 41),
    ]
    row = report["rows"][1]
    assert row["label"] == "eval-sd3-every2" and 0 < row["reuse_fraction"] < 1
    assert row["cost_model"] == "macs", row  # SD3's analytic cost model, read from the loaded MMDiT


def test_paths_outside_comfyuis_folders_are_refused_naming_the_input(comfy_server, eval_setup, tmp_path):
    srv = comfy_server
    outside = tmp_path / "outside"
    write_lpips(outside / "lpips")
    (outside / "refs").mkdir()
    metrics_dir = srv.base_dir / "models" / "ecad_metrics"
    link = metrics_dir / "link-out"
    if not link.is_symlink():
        os.symlink(outside, link)  # a symlink inside models/ecad_metrics to a folder outside
    cases = [
        ("lpips_weights", str(outside / "lpips")),  # absolute, outside
        ("clip_score_weights", "../../../clip"),  # relative, escapes with ..
        ("lpips_weights", "link-out/lpips"),  # through a symlink
        ("inception_weights", "/etc/passwd"),
        ("fid_reference_folder", str(outside / "refs")),
        ("fid_reference_folder", "../../refs"),
    ]
    for name, value in cases:
        p = _prompt({name: value, "metrics": "psnr, fid", "warmup": False}, vae=False)
        with pytest.raises(PromptExecutionError) as e:
            srv.run(p, timeout=120)
        msg = str(e.value)
        assert f"{name} {value!r}" in msg and "outside ComfyUI's models, input and output folders" in msg, msg


def test_paths_inside_comfyuis_folders_are_resolved_and_used(comfy_server, eval_setup):
    srv = comfy_server
    refs = srv.input_dir / "fid_refs"
    refs.mkdir(exist_ok=True)
    alias = srv.base_dir / "models" / "ecad_metrics" / "lpips-alias"
    if not alias.is_symlink():  # a symlink that stays inside ComfyUI's folders is fine
        os.symlink(srv.base_dir / "models" / "ecad_metrics" / "lpips", alias)
    p = _prompt(
        {
            "fid_reference_folder": "fid_refs",
            "lpips_weights": "lpips-alias",
            "clip_score_weights": str(srv.base_dir / "models" / "ecad_metrics" / eval_setup["clip"]),
            "metrics": "psnr, lpips, fid",
            "warmup": False,
            "prompts": "a red fox",
        }
    )
    _, report, _ = _report(srv, srv.run(p, timeout=600))
    settings = report["settings"]
    # relative FID folder: in the input folder; weights relative to models/ecad_metrics; all resolved
    assert settings["fid_reference"] == str(refs.resolve())
    assert settings["weights"]["lpips"] == str((srv.base_dir / "models" / "ecad_metrics" / "lpips").resolve())
    assert settings["weights"]["clip"] == str((srv.base_dir / "models" / "ecad_metrics" / "clip").resolve())
    assert isinstance(report["rows"][1]["metrics"]["lpips"], float)
