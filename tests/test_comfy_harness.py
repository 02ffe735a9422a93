"""End-to-end tests of the ComfyUI test harness itself (tests/comfy_harness/).

A real ComfyUI v0.3.75 runs headless on the CPU with tiny random stock-detected
checkpoints; the tests prove that stock workflows run on them, that the UI->API
converter produces runnable prompts, that errors surface, and that the browser
check can both pass and fail.
"""

from __future__ import annotations

import copy
import itertools
import re

import pytest

from comfy_harness import make_tiny
from comfy_harness.family_prompts import read_latent as _read_latent  # other test files import it from here
from comfy_harness.family_prompts import sampler_prompt
from comfy_harness.server import PromptExecutionError, PromptValidationError, ui_to_api

pytestmark = pytest.mark.comfy

_seeds = itertools.count(1000)


def ksampler_prompt(model: str, prefix: str, seed: int) -> dict:
    """A stock KSampler API workflow for one of the tiny models (SaveLatent + VAEDecode/SaveImage)."""
    is_flux = "flux" in model
    if is_flux or model in ("ecad_tiny_sd3", "ecad_tiny_wan"):
        dim, pooled, vae = make_tiny.FLUX_CONTEXT_DIM, make_tiny.FLUX_POOLED_DIM, "ecad_tiny_taesd_16ch"
        if model == "ecad_tiny_wan":  # T5 width, no pooled output; its 3-D latent is made from a 2-D one
            dim, pooled = make_tiny.PIXART_COND_DIM, 0
        elif model == "ecad_tiny_sd3":  # pooled as wide as the context (a tiny ComfyUI CLIP's pooled output)
            pooled = make_tiny.FLUX_CONTEXT_DIM
        latent, size = "EmptySD3LatentImage", {"width": 128, "height": 128, "batch_size": 1}
        cfg, scheduler = (1.0 if is_flux else 2.0), "simple"
    else:
        dim, pooled, vae = make_tiny.PIXART_COND_DIM, 0, "ecad_tiny_taesd_4ch"
        # PixArt: (W+H)/2 >= 272 px and sides multiples of 16 (see the headless recipe).
        latent, size = "EmptyLatentImage", {"width": 512, "height": 32, "batch_size": 1}
        cfg, scheduler = 2.0, "normal"
    p = sampler_prompt(
        model,
        seed,
        dim=dim,
        pooled_dim=pooled,
        latent=latent,
        latent_inputs=size,
        steps=3,
        cfg=cfg,
        scheduler=scheduler,
        prefix=prefix,
    )
    p.update(
        {
            "7": {"class_type": "VAELoader", "inputs": {"vae_name": make_tiny.file_name(vae)}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["7", 0]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
        }
    )
    if model == "ecad_tiny_flux_dev":
        p["10"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2", 0], "guidance": 3.5}}
        p["5"]["inputs"]["positive"] = ["10", 0]
    return p


# ----------------------------------------------------------------------------- server basics


def test_server_loads_support_pack(comfy_server):
    info = comfy_server.object_info()
    assert "TestRandomConditioning" in info, "support pack not loaded:\n" + comfy_server.log_text()[-4000:]
    assert "KSampler" in info and "UNETLoader" in info
    one = comfy_server.object_info("TestRandomConditioning")["TestRandomConditioning"]
    assert one["input_order"]["required"] == ["tokens", "dim", "pooled_dim", "seed", "zero"]
    stats = comfy_server.system_stats()["system"]
    assert stats["comfyui_version"] == make_tiny.comfy_version_of(comfy_server.comfy_dir)  # the tree we run
    assert stats["pytorch_version"].startswith("2.14.1")
    # the repo is symlinked in as a pack (its import may still fail while it is being written)
    assert "comfyui-ecad" in comfy_server.log_text()
    # the tiny models are listed for the loaders
    unets = info["UNETLoader"]["input"]["required"]["unet_name"][0]
    for name in ("ecad_tiny_pixart_alpha", "ecad_tiny_pixart_sigma", "ecad_tiny_flux_dev", "ecad_tiny_flux_schnell"):
        assert make_tiny.file_name(name) in unets


def test_tiny_models_are_cached(comfy_models):
    for name, path in comfy_models.items():
        assert path.is_file()
        assert make_tiny.is_current(make_tiny.DEFAULT_MODELS_ROOT, name)
    meta = make_tiny.read_safetensors_metadata(comfy_models["ecad_tiny_flux_dev"])
    assert meta[make_tiny.RECIPE_KEY] == make_tiny.recipe_hash("ecad_tiny_flux_dev")


def test_tiny_model_builds_with_the_default_interpreter(comfy_dir, tmp_path):
    # callers outside the fixture (the benches) name no interpreter: the build runs in the one ECAD_COMFY_PYTHON
    # names, as ComfyUI 0.33 needs its own venv's packages (comfy_aimdo)
    root = tmp_path / "comfy-test"
    path = make_tiny.ensure_models(root, names=["ecad_tiny_sd3"], comfy_dir=comfy_dir)["ecad_tiny_sd3"]
    assert make_tiny.is_current(root, "ecad_tiny_sd3", comfy_dir)
    assert path.stat().st_size > 1_000_000


# ----------------------------------------------------------------------------- stock KSampler


@pytest.mark.parametrize(
    "model,latent_shape",
    [
        ("ecad_tiny_pixart_alpha", (1, 4, 4, 64)),
        ("ecad_tiny_pixart_sigma", (1, 4, 4, 64)),
        ("ecad_tiny_flux_dev", (1, 16, 16, 16)),
        ("ecad_tiny_flux_schnell", (1, 16, 16, 16)),
    ],
)
def test_stock_ksampler_on_tiny_model(comfy_server, model, latent_shape):
    import torch

    seed = next(_seeds)
    prefix = f"harness_{model}_{seed}"
    entry = comfy_server.run(ksampler_prompt(model, prefix, seed), timeout=300)
    assert entry["status"]["status_str"] == "success"
    latents = comfy_server.output_files(entry, "latents")
    images = comfy_server.output_files(entry, "images")
    assert len(latents) == 1 and len(images) == 1
    lat = _read_latent(latents[0])
    assert tuple(lat.shape) == latent_shape
    assert torch.isfinite(lat).all(), f"non-finite latent from {model}"
    assert lat.float().std() > 0
    from PIL import Image

    with Image.open(images[0]) as im:
        assert im.size == (latent_shape[3] * 8, latent_shape[2] * 8)


def test_identical_prompt_is_cached_until_free(comfy_server):
    """ComfyUI serves an identical re-POST from its cache (no new file); free() drops that cache."""
    prefix = f"cache_{next(_seeds)}"
    p = ksampler_prompt("ecad_tiny_pixart_sigma", prefix, next(_seeds))
    del p["7"], p["8"], p["9"]  # SaveLatent only
    saved = lambda: sorted((comfy_server.output_dir / "latents").glob(prefix + "_*"))
    first = comfy_server.output_files(comfy_server.run(p), "latents")
    assert saved() == first
    again = comfy_server.run(p)
    # every node is cached; the history repeats the old outputs and no file is written
    assert comfy_server.output_files(again, "latents") == first
    assert saved() == first
    cached = [m for m in again["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and set(cached[0][1]["nodes"]) >= {"1", "5", "6"}
    comfy_server.free()
    third = comfy_server.output_files(comfy_server.run(p), "latents")
    assert len(third) == 1 and third != first and len(saved()) == 2
    assert _read_latent(third[0]).equal(_read_latent(first[0]))  # same seed, same result


# ----------------------------------------------------------------------------- error paths


def test_invalid_prompt_raises_with_node_errors(comfy_server):
    p = ksampler_prompt("ecad_tiny_pixart_sigma", "invalid", next(_seeds))
    p["1"]["inputs"]["unet_name"] = "no_such_model.safetensors"
    with pytest.raises(PromptValidationError) as ei:
        comfy_server.queue(p)
    assert "1" in ei.value.node_errors
    assert "unet_name" in str(ei.value)


def test_execution_error_raises_with_message(comfy_server):
    # 256x256 px is too small for PixArt without pos_embed (pe_interpolation rounds to 0).
    p = ksampler_prompt("ecad_tiny_pixart_sigma", "too_small", next(_seeds))
    p["4"]["inputs"].update(width=256, height=256)
    with pytest.raises(PromptExecutionError) as ei:
        comfy_server.run(p, timeout=120)
    assert ei.value.details["node_type"] == "KSampler"
    assert "ZeroDivisionError" in str(ei.value)


# ----------------------------------------------------------------------------- UI -> API


def _ui_node(nid, ntype, widgets=None, inputs=(), outputs=(), mode=0, pos=(0, 0), title=None):
    n = {
        "id": nid,
        "type": ntype,
        "pos": list(pos),
        "size": [300, 120],
        "flags": {},
        "order": nid,
        "mode": mode,
        "inputs": [dict(i) for i in inputs],
        "outputs": [dict(o) for o in outputs],
        "properties": {"Node name for S&R": ntype},
        "widgets_values": list(widgets or []),
    }
    if title:
        n["title"] = title
    return n


def ui_workflow(model="ecad_tiny_pixart_sigma", prefix="latents/ui_converted", extra_nodes=(), core_only=False):
    """A hand-written UI workflow (frontend save format, version 0.4).

    It exercises: KSampler's seed + "randomize" control value, a custom node's
    INT input named ``seed`` (the frontend gives it a control value too) converted
    to an input and fed by a PrimitiveNode, a bypassed LatentUpscaleBy, a Reroute,
    a muted node and a Note.  ``core_only`` swaps the support pack's conditioning
    for core nodes (for the browser check; it is not meant to run).
    """
    M = lambda name, typ, links, slot=0: {"name": name, "type": typ, "links": links, "slot_index": slot}
    In = lambda name, typ, link, widget=None: dict(
        {"name": name, "type": typ, "link": link}, **({"widget": {"name": widget}} if widget else {})
    )
    nodes = [
        _ui_node(
            1, "UNETLoader", [make_tiny.file_name(model), "default"], outputs=[M("MODEL", "MODEL", [1])], pos=(0, 0)
        ),
        _ui_node(4, "EmptyLatentImage", [512, 32, 1], outputs=[M("LATENT", "LATENT", [4])], pos=(0, 400)),
        _ui_node(
            5,
            "KSampler",
            [123, "randomize", 3, 2.0, "euler", "normal", 1.0],
            inputs=[
                In("model", "MODEL", 1),
                In("positive", "CONDITIONING", 2),
                In("negative", "CONDITIONING", 3),
                In("latent_image", "LATENT", 4),
            ],
            outputs=[M("LATENT", "LATENT", [5])],
            pos=(400, 0),
        ),
        _ui_node(
            6,
            "LatentUpscaleBy",
            ["nearest-exact", 1.5],
            inputs=[In("samples", "LATENT", 5)],
            outputs=[M("LATENT", "LATENT", [6])],
            mode=4,
            pos=(750, 0),
        ),
        _ui_node(
            7,
            "Reroute",
            [],
            inputs=[{"name": "", "type": "*", "link": 6}],
            outputs=[{"name": "", "type": "LATENT", "links": [7], "slot_index": 0}],
            pos=(1000, 0),
        ),
        _ui_node(8, "SaveLatent", [prefix], inputs=[In("samples", "LATENT", 7)], pos=(1100, 0)),
        _ui_node(10, "Note", ["a note; not part of the prompt"], pos=(0, 600)),
    ]
    links = [
        [1, 1, 0, 5, 0, "MODEL"],
        [2, 2, 0, 5, 1, "CONDITIONING"],
        [3, 3, 0, 5, 2, "CONDITIONING"],
        [4, 4, 0, 5, 3, "LATENT"],
        [5, 5, 0, 6, 0, "LATENT"],
        [6, 6, 0, 7, 0, "*"],
        [7, 7, 0, 8, 0, "LATENT"],
    ]
    if core_only:
        nodes += [
            _ui_node(
                12,
                "ConditioningZeroOut",
                [],
                inputs=[In("conditioning", "CONDITIONING", None)],
                outputs=[M("CONDITIONING", "CONDITIONING", [2, 3])],
                pos=(0, 200),
            ),
        ]
        links[1] = [2, 12, 0, 5, 1, "CONDITIONING"]
        links[2] = [3, 12, 0, 5, 2, "CONDITIONING"]
    else:
        nodes += [
            _ui_node(
                2,
                "TestRandomConditioning",
                [8, make_tiny.PIXART_COND_DIM, 0, 5, "fixed", False],
                inputs=[In("seed", "INT", 10, widget="seed")],
                outputs=[M("CONDITIONING", "CONDITIONING", [2])],
                pos=(0, 150),
                title="positive",
            ),
            _ui_node(
                3,
                "TestRandomConditioning",
                [8, make_tiny.PIXART_COND_DIM, 0, 0, "fixed", True],
                outputs=[M("CONDITIONING", "CONDITIONING", [3])],
                pos=(0, 300),
            ),
            _ui_node(
                9,
                "PrimitiveNode",
                [777, "fixed"],
                outputs=[{"name": "INT", "type": "INT", "links": [10], "slot_index": 0, "widget": {"name": "seed"}}],
                pos=(-300, 150),
            ),
            _ui_node(
                11,
                "TestRandomConditioning",
                [8, 4, 0, 1, "fixed", False],
                outputs=[M("CONDITIONING", "CONDITIONING", [])],
                mode=2,
                pos=(0, 800),
            ),
        ]
        links.append([10, 9, 0, 2, 3, "INT"])
    nodes += list(extra_nodes)
    return {
        "id": "00000000-0000-4000-8000-000000000000",
        "revision": 0,
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": max(link[0] for link in links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [100, 100]}},
        "version": 0.4,
    }


def test_ui_to_api_converts_and_runs(comfy_server):
    wf = ui_workflow(prefix="latents/ui_converted")
    prompt = comfy_server.ui_to_api(wf)
    strip = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert strip == {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "ecad_tiny_pixart_sigma.safetensors", "weight_dtype": "default"},
        },
        "2": {
            "class_type": "TestRandomConditioning",
            "inputs": {"tokens": 8, "dim": 4096, "pooled_dim": 0, "seed": 777, "zero": False},
        },
        "3": {
            "class_type": "TestRandomConditioning",
            "inputs": {"tokens": 8, "dim": 4096, "pooled_dim": 0, "seed": 0, "zero": True},
        },
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 32, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 123,
                "steps": 3,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
            },
        },
        "8": {"class_type": "SaveLatent", "inputs": {"filename_prefix": "latents/ui_converted", "samples": ["5", 0]}},
    }
    assert prompt["2"]["_meta"]["title"] == "positive"
    entry = comfy_server.run(prompt, timeout=300)
    (latent_file,) = comfy_server.output_files(entry, "latents")
    lat = _read_latent(latent_file)
    assert tuple(lat.shape) == (1, 4, 4, 64)  # LatentUpscaleBy was bypassed


def test_ui_to_api_rejects_unknown_and_mismatched(comfy_server):
    info = comfy_server.object_info()
    bogus = ui_workflow(extra_nodes=[_ui_node(50, "EcadDefinitelyNotANode", [1])])
    with pytest.raises(KeyError, match="EcadDefinitelyNotANode"):
        ui_to_api(bogus, info)
    wf = ui_workflow()
    bad = copy.deepcopy(wf)
    ks = next(n for n in bad["nodes"] if n["type"] == "KSampler")
    ks["widgets_values"] = ks["widgets_values"][:-2]
    with pytest.raises(ValueError, match="widgets_values"):
        ui_to_api(bad, info)
    # workflows without the control value after the seed also convert
    old = copy.deepcopy(wf)
    ks = next(n for n in old["nodes"] if n["type"] == "KSampler")
    ks["widgets_values"] = [123, 3, 2.0, "euler", "normal", 1.0]
    assert ui_to_api(old, info)["5"]["inputs"]["seed"] == 123


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser_results(comfy_server, browser_ready, artifacts_dir):
    """All browser checks in one chromium session (a launch costs ~5-10 s on 2 cores)."""
    core = ui_workflow(core_only=True)
    bogus = ui_workflow(core_only=True, extra_nodes=[_ui_node(60, "EcadBogusNodeType", [], pos=(400, 500))])
    jobs = [
        (core, artifacts_dir / "harness_core_workflow.png"),
        (bogus, artifacts_dir / "harness_missing_node.png"),
        (ui_workflow(), None, True),
    ]  # full workflow: also get the frontend's graphToPrompt
    return browser_ready.load_workflows_in_browser(comfy_server.url, jobs)


@pytest.mark.browser
def test_browser_core_workflow_has_no_missing_nodes(browser_results, comfy_dir):
    res = browser_results[0]
    assert res.missing == [], res.raw
    assert res.raw["reported_missing"] == [], res.raw  # the frontend's own list was captured
    assert res.graph_node_count >= 8
    # the frontend the ComfyUI tree pins (v0.3.75: 1.32.9, 0.33: 1.49.6)
    pinned = re.search(r"comfyui-frontend-package==(\S+)", (comfy_dir / "requirements.txt").read_text())
    assert pinned and res.frontend_version == pinned.group(1)
    assert not res.page_errors, res.page_errors
    assert not res.dialogs, res.dialogs
    assert res.screenshot.is_file() and res.screenshot.stat().st_size > 10_000


@pytest.mark.browser
def test_browser_reports_bogus_node_missing(browser_results):
    res = browser_results[1]
    assert res.missing == ["EcadBogusNodeType"], res.raw
    assert res.raw["reported_missing"] == ["EcadBogusNodeType"], res.raw
    assert any("EcadBogusNodeType" in d for d in res.notices), res.notices  # a dialog (v0.3.75) or a toast
    assert res.screenshot.is_file()


@pytest.mark.browser
def test_ui_to_api_matches_frontend_graph_to_prompt(comfy_server, browser_results):
    """The converter gives what the real frontend would POST (PrimitiveNode, bypass, Reroute, mute, Note)."""
    res = browser_results[2]
    assert res.missing == [], res.raw
    assert res.api_prompt, res.raw.get("api_prompt_error")
    assert ui_to_api(ui_workflow(), comfy_server.object_info()) == res.api_prompt
