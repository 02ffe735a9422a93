"""Evolve ECAD Schedule in a real ComfyUI v0.3.75 server, on the tiny stock-detected checkpoints."""

from __future__ import annotations

import json
import re
import time

import pytest
from test_comfy_harness import ksampler_prompt

from comfy_harness import make_tiny
from comfy_harness.server import PromptExecutionError, PromptValidationError

pytestmark = pytest.mark.comfy
STEPS = 4
PIXART = "ecad_tiny_pixart_alpha"
FLUX = "ecad_tiny_flux_dev"


def _evolve_inputs(**kw):
    d = {
        "prompts": "",
        "seeds_per_prompt": 1,
        "first_seed": 7,
        "steps": STEPS,
        "cfg": 2.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "width": 512,
        "height": 32,
        "population": 6,
        "generations": 1,
        "time_budget_minutes": 0.0,
        "quality_metric": "latent",
        "compute_objective": "macs",
        "target_speedup": 1.3,
        "output_name": "tiny-pixart",
        "search_seed": 0,
        "resume": True,
    }
    d.update(kw)
    return d


def _pixart_evolve_prompt(**kw):
    """Evolve on tiny PixArt-α (conditioning input) -> Apply(schedule) -> KSampler -> SaveLatent."""
    p = ksampler_prompt(PIXART, kw.pop("prefix", "evolved"), 11)
    p["5"]["inputs"]["steps"] = STEPS
    for k in ("7", "8", "9"):
        p.pop(k)
    p["30"] = {
        "class_type": "EvolveECADSchedule",
        "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], **_evolve_inputs(**kw)},
    }
    p["31"] = {
        "class_type": "ApplyECADSchedule",
        "inputs": {"model": ["1", 0], "preset": "off", "offload_cache_to_cpu": False, "schedule": ["30", 0]},
    }
    p["5"]["inputs"]["model"] = ["31", 0]
    return p


def _report(entry, node="30") -> str:
    return "\n".join(entry["outputs"][node]["text"])


def _search_dir(srv, name):
    return srv.base_dir / "models" / "ecad_schedules" / name


def test_evolve_writes_front_lists_it_and_feeds_apply(comfy_server):
    srv = comfy_server
    assert "EvolveECADSchedule" in srv.object_info()
    entry = srv.run(_pixart_evolve_prompt(), timeout=600)
    report = _report(entry)
    assert "generation 1" in report and "stopped: generations" in report, report
    # candidates after the first get step 0 from it (one sampler call per candidate here: one sample)
    served = re.search(r"step 0 served from the first run of its batch: (\d+) model call\(s\) saved", report)
    runs = re.search(r"\((\d+) sampling runs here\)", report)
    assert served and runs and int(served.group(1)) == int(runs.group(1)) - 2 > 0, report
    d = _search_dir(srv, "tiny-pixart")
    front = json.loads((d / "front" / "front.json").read_text())
    assert front["points"] and front["generation"] == 1 and front["steps"] == STEPS
    # analytic MACs of the loaded ComfyUI PixArt, not the uniform fallback
    assert front["cost"]["source"] == "macs", front["cost"]
    assert (d / "front" / "front.png").is_file() and (d / "checkpoint.safetensors").is_file()
    # the node shows the front plot and the Apply dropdown lists the front's points without a restart
    assert entry["outputs"]["30"]["images"], entry["outputs"]["30"]
    opts = srv.object_info("ApplyECADSchedule")["ApplyECADSchedule"]["input"]["required"]["preset"][0]
    listed = [o for o in opts if o.startswith("user/tiny-pixart/front/")]
    assert len(listed) == len(front["points"]), (listed, front["points"])
    assert not any("progress" in o for o in opts)
    # the picked point drove the sampler: the picked schedule's statistics are in the log
    picked = re.search(r"picked: (\S+) - expected ([\d.]+)x", report)
    assert picked and float(picked.group(2)) >= 1.3, report
    assert re.search(rf"ECAD {re.escape(picked.group(1))}: (\d+)/\d+ unit calls reused", srv.log_text())


def test_unit_probe_seeds_the_search_and_is_kept(comfy_server):
    srv = comfy_server
    name = "tiny-pixart-probe"
    entry = srv.run(_pixart_evolve_prompt(output_name=name, prefix="p0"), timeout=600)
    report = _report(entry)
    # auto: steps - 1 rows, at most population - 4 (6 - 4 = 2)
    assert "unit probe: 2 seed(s) from its step rows (probed here: one full-compute run)" in report, report
    d = _search_dir(srv, name)
    assert (d / "unit_probe.safetensors").is_file()
    assert "unit probe ran" in srv.log_text()
    front = json.loads((d / "front" / "front.json").read_text())
    assert front["settings"]["probe_seeds"] == 2, front["settings"]
    # a resume reads the table back instead of probing again
    entry = srv.run(_pixart_evolve_prompt(output_name=name, generations=2, prefix="p1"), timeout=600)
    report = _report(entry)
    assert "resumed from generation 1" in report and "(read from the search folder)" in report, report
    # off: no probe, and a resume of it that asks for probe seeds is refused as another setting
    entry = srv.run(_pixart_evolve_prompt(output_name=name + "-off", probe_seeds=0, prefix="p2"), timeout=600)
    assert "unit probe" not in _report(entry)
    assert not (_search_dir(srv, name + "-off") / "unit_probe.safetensors").exists()
    again = _pixart_evolve_prompt(output_name=name + "-off", probe_seeds=2, generations=2, prefix="p3")
    with pytest.raises(PromptExecutionError) as e:
        srv.run(again, timeout=600)
    assert "other settings" in str(e.value) and "probe_seeds" in str(e.value), str(e.value)[:2000]


@pytest.mark.slow
def test_rerun_resumes_and_cancel_keeps_checkpoint(comfy_server):
    srv = comfy_server
    name = "tiny-pixart-resume"
    srv.run(_pixart_evolve_prompt(output_name=name, generations=1, prefix="r0"), timeout=600)
    d = _search_dir(srv, name)
    assert json.loads((d / "progress.json").read_text())["generation"] == 1
    # a long search, cancelled after its first evolved generation is checkpointed
    pid = srv.queue(_pixart_evolve_prompt(output_name=name, generations=500, prefix="r1"))
    deadline = time.time() + 300
    while time.time() < deadline:
        if json.loads((d / "progress.json").read_text())["generation"] >= 2:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the search made no progress")
    srv.post_json("/interrupt", {})
    with pytest.raises(PromptExecutionError) as e:
        srv.wait(pid, timeout=300)
    assert e.value.details.get("event") == "execution_interrupted", e.value.details
    gen = json.loads((d / "progress.json").read_text())["generation"]
    assert gen >= 2 and (d / "checkpoint.safetensors").is_file()
    # running it again resumes from the checkpoint instead of starting over
    entry = srv.run(_pixart_evolve_prompt(output_name=name, generations=gen + 1, prefix="r2"), timeout=600)
    report = _report(entry)
    assert f"resumed from generation {gen}" in report and f"generation {gen + 1}," in report, report
    # resume off: starts over
    entry = srv.run(_pixart_evolve_prompt(output_name=name, generations=1, resume=False, prefix="r3"), timeout=600)
    assert "resumed" not in _report(entry) and "generation 1," in _report(entry)
    # another sampling setting under the same name is refused, naming what differs
    with pytest.raises(PromptExecutionError) as e:
        srv.run(_pixart_evolve_prompt(output_name=name, generations=1, first_seed=99, prefix="r4"), timeout=600)
    assert "other settings" in str(e.value) and "evaluator" in str(e.value), str(e.value)[:2000]


def test_prompts_through_a_text_encoder_on_sd3(comfy_server):
    """Prompt lines encoded by a real ComfyUI CLIP; SD3 gets its component units and analytic MACs."""
    srv = comfy_server
    p = {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": make_tiny.file_name("ecad_tiny_sd3"), "weight_dtype": "default"},
        },
        "2": {"class_type": "TestTinyCLIP", "inputs": {"hidden": make_tiny.FLUX_CONTEXT_DIM, "seed": 0}},
        "3": {
            "class_type": "EvolveECADSchedule",
            "inputs": {
                "model": ["1", 0],
                "clip": ["2", 0],
                **_evolve_inputs(
                    prompts="a red fox in the snow\n# comment lines are skipped\na blue vase",
                    scheduler="simple",
                    width=128,
                    height=128,
                    population=4,
                    generations=1,
                    target_speedup=0.0,
                    output_name="tiny-sd3",
                ),
            },
        },
    }
    entry = srv.run(p, timeout=600)
    report = _report(entry, "3")
    front = json.loads((_search_dir(srv, "tiny-sd3") / "front" / "front.json").read_text())
    assert front["evaluator"]["samples"] == 2, front["evaluator"]  # two prompts x one seed
    assert front["cost"]["source"] == "macs" and front["layout"].startswith("sd3"), front
    assert "picked:" in report


def test_flux_search_costs_analytic_macs(comfy_server):
    srv = comfy_server
    p = ksampler_prompt(FLUX, "flux_evolve", 3)
    for k in ("4", "5", "6", "7", "8", "9"):
        p.pop(k)
    p["30"] = {
        "class_type": "EvolveECADSchedule",
        "inputs": {
            "model": ["1", 0],
            "positive": ["10", 0],
            **_evolve_inputs(
                cfg=1.0,
                steps=2,
                scheduler="simple",
                width=128,
                height=128,
                population=2,
                generations=1,
                target_speedup=0.0,
                output_name="tiny-flux",
            ),
        },
    }
    entry = srv.run(p, timeout=600)
    front = json.loads((_search_dir(srv, "tiny-flux") / "front" / "front.json").read_text())
    assert front["cost"]["source"] == "macs" and front["cost"]["arch"] == "flux-dev", front["cost"]
    assert front["model"] == "flux-dev" and "picked:" in _report(entry)
    assert "unit probe: 1 seed(s) from its step rows (probed here" in _report(entry), _report(entry)


def test_latency_objective_measured_once_and_kept(comfy_server):
    srv = comfy_server
    entry = srv.run(
        _pixart_evolve_prompt(output_name="tiny-latency", compute_objective="latency", prefix="lat"), timeout=600
    )
    d = _search_dir(srv, "tiny-latency")
    front = json.loads((d / "front" / "front.json").read_text())
    assert front["cost"]["source"] == "latency" and front["cost"]["seconds_per_step"] > 0, front["cost"]
    saved = (d / "latency_cost.json").read_text()
    entry = srv.run(
        _pixart_evolve_prompt(output_name="tiny-latency", compute_objective="latency", generations=2, prefix="lat2"),
        timeout=600,
    )
    assert "resumed from generation 1" in _report(entry)
    assert (d / "latency_cost.json").read_text() == saved
    # ComfyUI FLUX's attention units are computed inside ComfyUI's own blocks: they cannot be timed one by one
    p = ksampler_prompt(FLUX, "flux_lat", 3)
    for k in ("4", "5", "6", "7", "8", "9"):
        p.pop(k)
    p["30"] = {
        "class_type": "EvolveECADSchedule",
        "inputs": {
            "model": ["1", 0],
            "positive": ["10", 0],
            **_evolve_inputs(
                cfg=1.0,
                steps=2,
                scheduler="simple",
                width=128,
                height=128,
                population=2,
                generations=1,
                compute_objective="latency",
                output_name="tiny-flux-lat",
            ),
        },
    }
    with pytest.raises(PromptExecutionError) as e:
        srv.run(p, timeout=300)
    assert "use compute_objective 'macs'" in str(e.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prompts": "   \n"}, "no calibration prompts"),
        ({"prompts": "a cat"}, "no text encoder"),
        ({"output_name": "../escape"}, "output_name"),
    ],
)
def test_bad_settings_are_clear_node_errors(comfy_server, change, message):
    p = _pixart_evolve_prompt(output_name="tiny-bad", prefix="bad")
    inputs = p["30"]["inputs"]
    del inputs["positive"]
    if "output_name" in change:
        inputs["positive"] = ["2", 0]
    inputs.update(change)
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    assert message in str(e.value), str(e.value)


def test_image_metric_without_vae_and_population_below_two(comfy_server):
    p = _pixart_evolve_prompt(output_name="tiny-bad2", quality_metric="ssim", prefix="bad2")
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    assert "connect a VAE" in str(e.value)
    p = _pixart_evolve_prompt(output_name="tiny-bad4", generations=0, prefix="bad4")
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    assert "never stop" in str(e.value)
    p = _pixart_evolve_prompt(output_name="tiny-bad3", population=1, prefix="bad3")
    with pytest.raises(PromptValidationError) as e:
        comfy_server.run(p, timeout=120)
    assert "population" in str(e.value.node_errors)
