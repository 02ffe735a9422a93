"""The shipped workflows in a real ComfyUI v0.3.75: the UI workflows (example_workflows/, the template browser's)
and their API prompts (workflows/api/, for POST /prompt).

(a) every node type exists and every widget value is valid against the server's
    /object_info (model file names excepted; ECAD presets must resolve by key);
(b) each template is listed once (no UI copy in workflows/), and each API prompt is its UI workflow converted
    against the server's /object_info;
(c) each API prompt runs end to end on the tiny checkpoints (loaders, text encoders and
    the ECAD preset swapped for test stand-ins);
(d) each UI workflow loads in the real frontend (headless chromium) with no missing node types.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from pathlib import Path

import pytest

from comfy_harness import make_tiny
from comfy_harness.server import _VIRTUAL_TYPES, _input_specs, _map_widgets, ui_to_api
from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"
API_DIR = REPO / "workflows" / "api"
NAMES = [
    "ecad_pixart_alpha.json",
    "ecad_pixart_sigma.json",
    "ecad_flux_dev.json",
    "ecad_evolve_pixart_alpha.json",
    "ecad_evolve_zimage.json",
    "ecad_evolve_flux2.json",
    "ecad_evolve_chroma.json",
    "ecad_evolve_sd3.json",
    "ecad_evolve_qwen_image.json",
]
EVOLVE = "ecad_evolve_pixart_alpha.json"
EVOLVES = {  # Evolve -> Apply
    EVOLVE,
    "ecad_evolve_zimage.json",
    "ecad_evolve_flux2.json",
    "ecad_evolve_chroma.json",
    "ecad_evolve_sd3.json",
    "ecad_evolve_qwen_image.json",
}
ALL_FILES = [EXAMPLES / n for n in NAMES]
# combo inputs holding model file names: the test server has only the tiny models
MODEL_FILE_INPUTS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name"}
# ECAD combos: values carry a speedup text after " · " that may change; the key must resolve
ECAD_KEY_INPUTS = {("ApplyECADSchedule", "preset"), ("LoadECADSchedule", "schedule_file")}
_seeds = itertools.count(9000)
STEPS = 4
TINY = {  # workflow -> (tiny unet, layout of the tiny model, vae, is_flux)
    "ecad_pixart_alpha.json": ("ecad_tiny_pixart_alpha", make_layout("pixart", 2), "ecad_tiny_taesd_4ch", False),
    "ecad_pixart_sigma.json": ("ecad_tiny_pixart_sigma", make_layout("pixart", 2), "ecad_tiny_taesd_4ch", False),
    "ecad_flux_dev.json": ("ecad_tiny_flux_dev", make_layout("flux", 1, 1), "ecad_tiny_taesd_16ch", True),
    EVOLVE: ("ecad_tiny_pixart_alpha", make_layout("pixart", 2), "ecad_tiny_taesd_4ch", False),
    # Z-Image's tiny stand-in: 16-channel latent, 64-wide caption (FLUX's conditioning fits: pooled is ignored)
    "ecad_evolve_zimage.json": ("ecad_tiny_lumina2", make_layout("lumina2", 2), "ecad_tiny_taesd_16ch", True),
    # FLUX.2's 128-channel latents decode through a tiny FLUX.2 VAE (ComfyUI 0.33 reads a 128-channel TAESD as 32)
    "ecad_evolve_flux2.json": ("ecad_tiny_flux2_klein", make_layout("flux2", 1, 1), "ecad_tiny_flux2_vae", True),
    "ecad_evolve_chroma.json": ("ecad_tiny_chroma", make_layout("chroma", 1, 1), "ecad_tiny_taesd_16ch", True),
    "ecad_evolve_sd3.json": ("ecad_tiny_sd3", make_layout("sd3", 1, 1), "ecad_tiny_taesd_16ch", True),
    # Qwen-Image's 3-D latents decode through a tiny Wan 2.1 VAE
    "ecad_evolve_qwen_image.json": (
        "ecad_tiny_qwen_image",
        make_layout("qwen_image", 1),
        "ecad_tiny_wan21_vae",
        True,
    ),
}
# conditioning widths other than FLUX's / PixArt's: (text, pooled)
TINY_COND = {
    "ecad_evolve_sd3.json": (make_tiny.FLUX_CONTEXT_DIM, make_tiny.FLUX_CONTEXT_DIM),
    "ecad_evolve_qwen_image.json": (make_tiny.QWEN_CONTEXT_DIM, 0),
}
# searches kept short where a tiny model is slow on the CPU (Chroma's stock approximator: ~10 s a step)
TINY_SEARCH = {
    "ecad_evolve_chroma.json": dict(steps=2, population=2),
    "ecad_evolve_qwen_image.json": dict(steps=2, population=2),  # 3072 wide
}
# no tiny FLUX.2 workflow run on ComfyUI 0.3.75: it loads FLUX.2 only 6144 wide (48 heads fixed); 0.33 runs it
NOT_RUN_ON_0375 = {"ecad_evolve_flux2.json"}
# opt-in: Chroma's stock approximator (344 vectors through 5 layers 5120 wide, sizes ComfyUI's detection fixes)
# costs seconds of CPU per model call whatever the image size, and the smallest search (population 2, 1
# generation, 2 steps) plus the KSampler is 12 calls. The same nodes (Evolve on MACs, Apply, Evaluate) run on a
# Chroma server by default in test_comfy_flux_class_server.py; this adds only the template's wiring, checked
# above against /object_info
SLOW_ON_CPU = {"ecad_evolve_chroma.json"}


def _key(value: str) -> str:
    return str(value).split(" · ")[0].strip()


def workflow_problems(workflow: dict, object_info: dict) -> list[str]:
    """Everything in a UI workflow the server would not accept (empty list: fine)."""
    problems = []
    for node in workflow.get("nodes", []):
        ntype, nid = node.get("type"), node.get("id")
        if ntype in _VIRTUAL_TYPES:
            continue
        node_def = object_info.get(ntype)
        if node_def is None:
            problems.append(f"node {nid}: unknown node type {ntype!r}")
            continue
        try:
            values = _map_widgets(node, node_def)
        except ValueError as e:
            problems.append(str(e))
            continue
        specs = {name: (typ, opts) for name, typ, opts in _input_specs(node_def)}
        for name, value in values.items():
            typ, opts = specs[name]
            where = f"node {nid} ({ntype}).{name}={value!r}"
            if isinstance(typ, list) or typ == "COMBO":
                options = typ if isinstance(typ, list) else opts.get("options", [])
                if name in MODEL_FILE_INPUTS:
                    if not isinstance(value, str) or not value:
                        problems.append(f"{where}: not a file name")
                elif (ntype, name) in ECAD_KEY_INPUTS:
                    if _key(value) not in {_key(o) for o in options}:
                        problems.append(f"{where}: ECAD preset key {_key(value)!r} not offered")
                elif value not in options:
                    problems.append(f"{where}: not one of {options[:8]}...")
            elif typ in ("INT", "FLOAT"):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or (typ == "INT" and not float(value).is_integer())
                ):
                    problems.append(f"{where}: not a {typ}")
                elif ("min" in opts and value < opts["min"]) or ("max" in opts and value > opts["max"]):
                    problems.append(f"{where}: outside [{opts.get('min')}, {opts.get('max')}]")
            elif typ == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{where}: not a boolean")
            elif typ == "STRING" and not isinstance(value, str):
                problems.append(f"{where}: not a string")
    return problems


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def object_info(comfy_server):
    info = comfy_server.object_info()
    assert "ApplyECADSchedule" in info, "pack failed to import:\n" + comfy_server.log_text()[-3000:]
    return info


# ----------------------------------------------------------------------------- (a) + (b)


def test_workflows_folder_holds_the_api_prompts():
    # no *.json directly in workflows/: ComfyUI would list it as a template beside example_workflows/'s
    # (test_comfy_ui_help.py::test_templates_are_listed_under_the_pack_with_thumbnails asks the server)
    assert sorted(p.name for p in (REPO / "workflows").glob("*.json")) == []
    ui, api = (sorted(p.name for p in d.glob("*.json")) for d in (EXAMPLES, API_DIR))
    from test_workflows_video import VIDEO_NAMES  # the video workflows' own tests

    assert ui == api == sorted(NAMES + VIDEO_NAMES)
    assert "POST" in (REPO / "workflows" / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NAMES)
def test_api_prompt_is_the_ui_workflow_converted(object_info, name):
    # regenerate with scripts/make_api_workflows.py after changing a UI workflow
    shipped, ui = _load(API_DIR / name), _load(EXAMPLES / name)
    converted = ui_to_api(ui, object_info)
    assert {k: (v["class_type"], v["inputs"]) for k, v in shipped.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in converted.items()
    }
    # an untitled node's _meta title is the server's display name, which versions rename (0.33: DualCLIPLoader's)
    titled = {str(n["id"]) for n in ui["nodes"] if n.get("title")}
    assert titled and all(shipped[k]["_meta"] == converted[k]["_meta"] for k in titled & set(converted))
    assert all(isinstance(v["_meta"]["title"], str) and v["_meta"]["title"] for v in shipped.values())


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_workflow_nodes_and_widgets_valid(object_info, path):
    wf = _load(path)
    assert wf["version"] == 0.4
    assert workflow_problems(wf, object_info) == []
    types = {n["type"] for n in wf["nodes"]}
    if "pixart" in path.name:
        # ComfyUI's PixArt (v0.3.75, 0.33) divides by zero below (W+H)/2 = 264 px (pe_interpolation/base_size round
        # to 0)
        for n in wf["nodes"]:
            if n["type"] == "EmptyLatentImage" or n["type"] == "EvolveECADSchedule":
                w, h = (
                    ui_to_api(wf, object_info)[str(n["id"])]["inputs"]["width"],
                    ui_to_api(wf, object_info)[str(n["id"])]["inputs"]["height"],
                )
                assert (w + h) / 2 >= 264, (n["type"], w, h)
    assert {
        "ApplyECADSchedule",
        "PreviewECADSchedule",
        "UNETLoader",
        "KSampler",
        "VAELoader",
        "VAEDecode",
        "SaveImage",
        "CLIPTextEncode",
    } <= types
    assert ("DualCLIPLoader" if path.name == "ecad_flux_dev.json" else "CLIPLoader") in types
    if path.name in EVOLVES:
        api = ui_to_api(wf, object_info)
        ev = next(v for v in api.values() if v["class_type"] == "EvolveECADSchedule")
        ap = next(v for v in api.values() if v["class_type"] == "ApplyECADSchedule")
        ks = next(v for v in api.values() if v["class_type"] == "KSampler")
        # the searched schedule drives the sampler, with the settings it was searched for
        assert ap["inputs"]["schedule"][0] == next(k for k, v in api.items() if v is ev)
        for k in ("steps", "cfg", "sampler_name", "scheduler"):
            assert ev["inputs"][k] == ks["inputs"][k], k
        assert ev["inputs"]["clip"] and ev["inputs"]["population"] >= 2 and ev["inputs"]["generations"] >= 1
        return
    assert "LoadECADSchedule" in types
    expected = {
        "ecad_pixart_alpha.json": "pixart-alpha-256-fast",
        "ecad_pixart_sigma.json": "pixart-sigma-256-fast",
        "ecad_flux_dev.json": "flux-dev-256-fast",
    }[path.name]
    apply = next(n for n in wf["nodes"] if n["type"] == "ApplyECADSchedule")
    assert _key(apply["widgets_values"][0]) == expected
    ks = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    assert ui_to_api(wf, object_info)[str(ks["id"])]["inputs"]["steps"] == 20


def test_workflow_check_catches_bad_workflows(object_info):
    wf = _load(EXAMPLES / "ecad_pixart_alpha.json")
    assert workflow_problems(wf, object_info) == []

    bogus = copy.deepcopy(wf)
    bogus["nodes"].append(
        {"id": 99, "type": "EcadNoSuchNode", "mode": 0, "inputs": [], "outputs": [], "widgets_values": []}
    )
    assert any("EcadNoSuchNode" in p for p in workflow_problems(bogus, object_info))

    bad_preset = copy.deepcopy(wf)
    next(n for n in bad_preset["nodes"] if n["type"] == "ApplyECADSchedule")["widgets_values"][0] = (
        "pixart-alpha-999-bogus · PixArt-α · 9.99×"
    )
    assert any("pixart-alpha-999-bogus" in p for p in workflow_problems(bad_preset, object_info))

    # a changed speedup text still resolves by key
    relabelled = copy.deepcopy(wf)
    next(n for n in relabelled["nodes"] if n["type"] == "ApplyECADSchedule")["widgets_values"][0] = (
        "pixart-alpha-256-fast · PixArt-α · 1.23×"
    )
    assert workflow_problems(relabelled, object_info) == []

    bad_steps = copy.deepcopy(wf)
    next(n for n in bad_steps["nodes"] if n["type"] == "KSampler")["widgets_values"][2] = 0
    assert any("steps" in p for p in workflow_problems(bad_steps, object_info))

    bad_sampler = copy.deepcopy(wf)
    next(n for n in bad_sampler["nodes"] if n["type"] == "KSampler")["widgets_values"][4] = "no_such_sampler"
    assert any("sampler_name" in p for p in workflow_problems(bad_sampler, object_info))

    bad_clip_type = copy.deepcopy(wf)
    next(n for n in bad_clip_type["nodes"] if n["type"] == "CLIPLoader")["widgets_values"][1] = "nope"
    assert any("type" in p for p in workflow_problems(bad_clip_type, object_info))


# ----------------------------------------------------------------------------- (c) runs end to end


@pytest.fixture(scope="module")
def tiny_schedules(comfy_server):
    d = comfy_server.base_dir / "models" / "ecad_schedules"
    d.mkdir(parents=True, exist_ok=True)
    names = {}
    for wf_name, (model, layout, _vae, _flux) in TINY.items():
        name = f"wf_{model}_every2"
        Schedule.every_n(layout, 20, 2, name=name).save(d / f"{name}.json")
        names[wf_name] = name
    return names


def tiny_prompt(api: dict, wf_name: str, schedule_name: str, seed: int) -> dict:
    """A copy of the workflow's API prompt with the tiny model, random conditioning and a tiny-model schedule."""
    model, _layout, vae, is_flux = TINY[wf_name]
    p = copy.deepcopy(api)
    for nid in [k for k, v in p.items() if v["class_type"] in ("CLIPLoader", "DualCLIPLoader")]:
        del p[nid]
    dim, pooled = (make_tiny.FLUX_CONTEXT_DIM, make_tiny.FLUX_POOLED_DIM) if is_flux else (make_tiny.PIXART_COND_DIM, 0)
    dim, pooled = TINY_COND.get(wf_name, (dim, pooled))
    if wf_name in EVOLVES:
        p["900"] = {
            "class_type": "TestRandomConditioning",  # the search's calibration prompt stand-in
            "inputs": {"tokens": 8, "dim": dim, "pooled_dim": pooled, "seed": seed, "zero": False},
        }
    for v in p.values():
        ct, ins = v["class_type"], v["inputs"]
        if ct == "CLIPTextEncode":
            v["class_type"] = "TestRandomConditioning"
            v["inputs"] = {
                "tokens": 8,
                "dim": dim,
                "pooled_dim": pooled,
                "seed": seed,
                "zero": "negative" in v["_meta"]["title"].lower(),
            }
        elif ct == "UNETLoader":
            ins["unet_name"] = make_tiny.file_name(model)
        elif ct == "VAELoader":
            ins["vae_name"] = make_tiny.file_name(vae)
        elif ct == "ApplyECADSchedule":
            ins["preset"] = f"user/{schedule_name}"
        elif ct == "EvolveECADSchedule":
            ins.pop("clip")
            ins.update(
                positive=["900", 0],
                steps=STEPS,
                width=128 if is_flux else 512,
                height=128 if is_flux else 32,
                population=4,
                generations=1,
                output_name=f"wf-evolve-{seed}",
            )
            ins.update(TINY_SEARCH.get(wf_name, {}))
        elif ct == "KSampler":
            ins.update(steps=TINY_SEARCH.get(wf_name, {}).get("steps", STEPS), seed=seed)
        elif ct in ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyFlux2LatentImage"):
            # PixArt without pos_embed needs (W+H)/2 >= 272 px; the tiny FLUX is fine at 128 px
            ins.update(width=512, height=32) if not is_flux else ins.update(width=128, height=128)
        elif ct == "SaveImage":
            ins["filename_prefix"] = f"wf_{wf_name[:-5]}_{seed}"
    return p


@pytest.mark.parametrize("wf_name", NAMES)
def test_api_prompt_runs_on_tiny_model(comfy_server, tiny_schedules, wf_name):
    # the shipped API prompt, POSTed as curl would (no UI workflow in extra_data); it equals the UI workflow
    # converted (test_api_prompt_is_the_ui_workflow_converted), so this runs the template too
    if wf_name in SLOW_ON_CPU and not os.environ.get("ECAD_SLOW_WORKFLOWS"):
        pytest.skip("minutes on the CPU (set ECAD_SLOW_WORKFLOWS=1 to run it)")
    if wf_name in NOT_RUN_ON_0375 and make_tiny.comfy_version_of(comfy_server.comfy_dir) == "0.3.75":
        pytest.skip("ComfyUI 0.3.75 loads FLUX.2 only 6144 wide (48 heads fixed); run on 0.33 (e2e033)")
    seed = next(_seeds)
    p = tiny_prompt(_load(API_DIR / wf_name), wf_name, tiny_schedules[wf_name], seed)
    entry = comfy_server.run(p, timeout=300)
    assert entry["status"]["status_str"] == "success"
    images = comfy_server.output_files(entry, "images")
    # SaveImage's image plus PreviewECADSchedule's schedule picture
    saved = [i for i in images if i.name.startswith(f"wf_{wf_name[:-5]}_{seed}")]
    assert len(saved) == 1 and saved[0].is_file(), images
    ks = next(k for k, v in p.items() if v["class_type"] == "KSampler")
    assert p[ks]["inputs"]["model"][0] in {k for k, v in p.items() if v["class_type"] == "ApplyECADSchedule"}
    log = comfy_server.log_text()
    name = tiny_schedules[wf_name]
    if wf_name in EVOLVES:  # the picked point of the search drove the KSampler
        ev = next(k for k, v in p.items() if v["class_type"] == "EvolveECADSchedule")
        name = re.search(r"picked: (\S+) ", "\n".join(entry["outputs"][ev]["text"])).group(1)
        assert (comfy_server.base_dir / "models" / "ecad_schedules" / f"wf-evolve-{seed}" / "front").is_dir()
    assert f"ECAD: applied schedule {name!r}" in log, log[-3000:]
    assert f"ECAD {name}:" in log, log[-3000:]


# ----------------------------------------------------------------------------- (d) browser


@pytest.fixture(scope="module")
def browser_results(comfy_server, browser_ready, artifacts_dir):
    jobs = [(_load(p), artifacts_dir / f"workflow_{p.parent.name}_{p.stem}.png") for p in ALL_FILES]
    return dict(zip(ALL_FILES, browser_ready.load_workflows_in_browser(comfy_server.url, jobs)))


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_workflow_loads_in_browser_without_missing_nodes(browser_results, path):
    res = browser_results[path]
    assert res.missing == [], res.raw
    assert res.raw["reported_missing"] == [], res.raw
    assert res.graph_node_count == len(_load(path)["nodes"])
    assert not res.page_errors, res.page_errors
    assert res.screenshot.is_file() and res.screenshot.stat().st_size > 10_000
