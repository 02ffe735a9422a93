"""The Evolve node's unit probe where it cannot run (issue #19), in-process on ComfyUI's own loader and sampler with
the tiny stock-detected PixArt-α: a model the pack runs uncached (a ComfyUI change: its blocks no longer call their
modules) searches without probe seeds after one warning instead of failing, and a stage's search refuses an
explicit probe_seeds by name while auto (-1) means none. Runs on the ComfyUI tree the suite is pointed at
(``ECAD_COMFY_DIR`` / ``ECAD_COMFY_PYTHON``: v0.3.75 by default, 0.33 in CI's second pass)."""

from __future__ import annotations

import importlib
import json
import logging

import pytest
import torch

from comfy_harness import family_prompts, inprocess

pytestmark = pytest.mark.comfy
STEPS = 4
MODEL = "ecad_tiny_pixart_alpha"


@pytest.fixture(scope="module")
def env(comfy_dir, comfy_models):
    inprocess.sampling_modules()
    import comfy.sd

    node = importlib.import_module("comfyui_ecad_bench.nodes.evolve_node")
    hooks = importlib.import_module("comfyui_ecad_bench.ecad_core.hooks")
    model = comfy.sd.load_diffusion_model(str(comfy_models[MODEL]), model_options={"dtype": torch.float32})
    return node, hooks, model


@pytest.fixture
def folder(env, tmp_path, monkeypatch):
    """models/ecad_schedules/ in a temporary folder, every block checked anew."""
    node, hooks, _ = env
    monkeypatch.setattr(node.library, "user_dirs", lambda: [tmp_path])
    hooks.forget_verified()
    return tmp_path


def _conditioning(seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 8, 4096, generator=g), {"pooled_output": None}]]  # PixArt: T5 tokens 4096 wide


def _inputs(node, model, **kw):
    d = family_prompts.evolve_node(STEPS, "probe-test", first_seed=7, population=6, resume=False)["inputs"]
    d.update(width=512, height=32, scheduler="normal", target_speedup=0.0)
    d.update(model=model, positive=_conditioning(1), negative=[[torch.zeros(1, 8, 4096), {"pooled_output": None}]])
    d.update(kw)
    return node.EvolveInputs(**d)


def _blocks_that_stop_calling_attn(monkeypatch, model):
    """A future ComfyUI PixArt block that no longer calls ``attn``, as tests/test_comfy_upstream_changes.py simulates:
    module caching sees no attn call at step 0, so the pack runs the model uncached from then on."""
    inprocess.pixart_blocks_stop_calling_attn(monkeypatch, type(model.model.diffusion_model.blocks[0]))


@pytest.mark.parametrize("probe_seeds", [-1, 2])
def test_a_model_run_uncached_searches_without_probe_seeds(env, folder, monkeypatch, caplog, probe_seeds):
    # auto, and an explicit request too: the user cannot know that the pack fell back, so not their error
    node, _, model = env
    _blocks_that_stop_calling_attn(monkeypatch, model)
    with caplog.at_level(logging.WARNING, logger="ecad"):
        out = node.evolve(_inputs(node, model, probe_seeds=probe_seeds))
    report = out["result"][2]
    assert "stopped: generations" in report and "unit probe skipped: the unit probe measured no unit" in report, report
    assert "unit probe:" not in report  # no seeds claimed
    warned = [r.getMessage() for r in caplog.records if "measured no unit through the ECAD engine" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    version = importlib.import_module("comfyui_ecad_bench.nodes.adapters.base").comfy_version()
    d = folder / "probe-test"
    assert str(d) in warned[0] and f"ComfyUI {version}, " in warned[0] and "2 probe seed(s)" in warned[0]
    assert "no cache (its blocks did not call" in caplog.text  # the pack's own fallback, which the probe met
    assert not (d / "unit_probe.safetensors").exists()
    front = json.loads((d / "front" / "front.json").read_text())
    assert front["points"] and front["generation"] == 1 and front["settings"]["probe_seeds"] == 0


def test_stage_search_refuses_explicit_probe_seeds_and_auto_means_none(env, folder, caplog):
    node, _, model = env
    stage = {"start_at_step": 2, "other_model": model}  # the tiny PixArt as both experts: steps 0-1 the other one
    with pytest.raises(node.SearchSettingsError) as e:
        node.evolve(_inputs(node, model, probe_seeds=2, **stage))
    msg = str(e.value)
    assert msg.startswith("probe_seeds: the unit probe measures a whole run of the model") and "one stage" in msg, msg
    assert "set probe_seeds to 0 or -1" in msg, msg
    assert not (folder / "probe-test" / "unit_probe.safetensors").exists()
    with caplog.at_level(logging.INFO, logger="ecad"):
        out = node.evolve(_inputs(node, model, probe_seeds=-1, **stage))
    report = out["result"][2]
    assert "stopped: generations" in report and "stage: steps 2..3 of 4" in report, report
    assert "unit probe" not in report and "unit probe" not in caplog.text
    d = folder / "probe-test"
    assert not (d / "unit_probe.safetensors").exists()
    assert json.loads((d / "front" / "front.json").read_text())["settings"]["probe_seeds"] == 0
