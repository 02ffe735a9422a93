"""The video example workflows (issue #18: Wan 2.1 T2V with Evolve, Wan 2.2's two experts, HunyuanVideo 1.5 T2V
with Evolve) in a real ComfyUI server, as tests/test_workflows.py checks the image ones: every node and widget
valid against /object_info, the API prompt is the UI workflow converted, the API prompt runs on the tiny video
models (decoding replaced by SaveLatent: the tiny VAEs are 2-D), and the UI workflow loads in the frontend."""

from __future__ import annotations

import copy
import itertools
import re

import numpy as np
import pytest
from test_workflows import API_DIR, EXAMPLES, _load, workflow_problems

from comfy_harness import make_tiny
from comfy_harness.server import ui_to_api
from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy
VIDEO_NAMES = ["ecad_evolve_wan21_t2v.json", "ecad_wan22_two_experts.json", "ecad_evolve_hunyuan_video15_t2v.json"]
FILES = [EXAMPLES / n for n in VIDEO_NAMES]
# workflow -> (tiny model, its layout, conditioning width, pooled width)
TINY = {
    "ecad_evolve_wan21_t2v.json": ("ecad_tiny_wan", make_layout("wan", 2), make_tiny.PIXART_COND_DIM, 0),
    "ecad_wan22_two_experts.json": ("ecad_tiny_wan", make_layout("wan", 2), make_tiny.PIXART_COND_DIM, 0),
    "ecad_evolve_hunyuan_video15_t2v.json": (
        "ecad_tiny_hunyuan_video15",
        make_layout("hunyuan_video15", 2),
        make_tiny.FLUX_CONTEXT_DIM,
        make_tiny.FLUX_POOLED_DIM,
    ),
}
_seeds = itertools.count(18800)
STEPS = 4


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.mark.parametrize("name", VIDEO_NAMES)
def test_video_workflow_valid_and_api_prompt_is_it_converted(object_info, name):
    wf = _load(EXAMPLES / name)
    assert wf["version"] == 0.4 and workflow_problems(wf, object_info) == []
    api = ui_to_api(wf, object_info)
    shipped = _load(API_DIR / name)
    assert {k: (v["class_type"], v["inputs"]) for k, v in shipped.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()
    }
    types = [v["class_type"] for v in api.values()]
    assert {"UNETLoader", "VAELoader", "VAEDecode", "SaveAnimatedWEBP", "ApplyECADSchedule"} <= set(types)
    assert ("DualCLIPLoader" if "hunyuan" in name else "CLIPLoader") in types
    samplers = [v for v in api.values() if v["class_type"] in ("KSampler", "KSamplerAdvanced")]
    # every sampler runs a model that went through its own Apply
    applies = {k for k, v in api.items() if v["class_type"] == "ApplyECADSchedule"}
    assert all(s["inputs"]["model"][0] in applies for s in samplers)
    if "two_experts" in name:  # two experts, two stages of one trajectory, an Apply each
        assert len(samplers) == 2 == len(applies) and types.count("UNETLoader") == 2
        a, b = (s["inputs"] for s in samplers)
        assert (a["start_at_step"], a["end_at_step"], b["start_at_step"]) == (0, 10, 10) and a["steps"] == b["steps"]
        assert a["return_with_leftover_noise"] == "enable" and b["add_noise"] == "disable"
        assert len({api[s["inputs"]["model"][0]]["inputs"]["model"][0] for s in samplers}) == 2  # two models
    else:  # the searched schedule drives the sampler, with the settings it was searched for
        ev = next(v for v in api.values() if v["class_type"] == "EvolveECADSchedule")
        (ap,) = (api[k] for k in applies)
        assert api[ap["inputs"]["schedule"][0]] is ev
        for k in ("steps", "cfg", "sampler_name", "scheduler"):
            assert ev["inputs"][k] == samplers[0]["inputs"][k], k


@pytest.fixture(scope="module")
def tiny_schedules(comfy_server):
    d = comfy_server.base_dir / "models" / "ecad_schedules"
    d.mkdir(parents=True, exist_ok=True)
    lay = make_layout("wan", 2)
    rng = np.random.default_rng(188)
    for tag in ("high", "low"):  # 20 rows: the whole trajectory of the two stages
        Schedule(lay, rng.random((20, lay.n_units)) < 0.4, name=f"wf-wan22-{tag}").save(d / f"wf-wan22-{tag}.json")
    return d


def tiny_prompt(api: dict, name: str, seed: int) -> dict:
    """The API prompt on the tiny model: random conditioning, small sizes and steps, the latent saved."""
    model, _lay, dim, pooled = TINY[name]
    p = copy.deepcopy(api)
    for k in [
        k
        for k, v in p.items()
        if v["class_type"] in ("CLIPLoader", "DualCLIPLoader", "VAELoader", "VAEDecode", "SaveAnimatedWEBP")
    ]:
        del p[k]
    p["900"] = {
        "class_type": "TestRandomConditioning",
        "inputs": {"tokens": 8, "dim": dim, "pooled_dim": pooled, "seed": seed, "zero": False},
    }
    last = None
    for k, v in p.items():
        ct, ins = v["class_type"], v["inputs"]
        if ct == "CLIPTextEncode":
            v["class_type"] = "TestRandomConditioning"
            v["inputs"] = {
                "tokens": 8,
                "dim": dim,
                "pooled_dim": pooled,
                "seed": seed,
                "zero": "Negative" in v["_meta"]["title"],
            }
        elif ct == "UNETLoader":
            ins["unet_name"] = make_tiny.file_name(model)
        elif ct == "EvolveECADSchedule":
            ins.pop("clip")
            ins.update(positive=["900", 0], steps=STEPS, width=64, height=64, population=4, generations=1)
            ins["output_name"] = f"wf-video-{seed}"
        elif ct in ("EmptyHunyuanLatentVideo", "EmptyHunyuanVideo15Latent"):
            ins.update(width=64, height=64, length=5)
        elif ct == "KSampler":
            ins.update(steps=STEPS, seed=seed)
            last = k
        elif ct == "KSamplerAdvanced":
            ins.update(steps=8, noise_seed=seed)
            if ins["start_at_step"] == 0:
                ins["end_at_step"] = 4
            else:
                ins["start_at_step"] = 4
                last = k
        elif ct == "ApplyECADSchedule" and "two_experts" in name:
            ins["preset"] = "user/wf-wan22-" + ("high" if "high" in v["_meta"]["title"] else "low")
    p["901"] = {"class_type": "SaveLatent", "inputs": {"samples": [last, 0], "filename_prefix": f"latents/wfv{seed}"}}
    return p


@pytest.mark.parametrize("name", VIDEO_NAMES)
def test_video_api_prompt_runs_on_tiny_model(comfy_server, tiny_schedules, name):
    srv = comfy_server
    seed = next(_seeds)
    start = len(srv.log_text())
    entry = srv.run(tiny_prompt(_load(API_DIR / name), name, seed), timeout=600)
    assert entry["status"]["status_str"] == "success"
    assert srv.output_files(entry, "latents")
    log = srv.log_text()[start:]
    if "two_experts" in name:  # each expert read its own stage's rows of its own schedule
        assert re.search(r"ECAD wf-wan22-high: .*steps 0\u20133 of 8 \(stage 1 of a split run\)", log), log[-3000:]
        assert re.search(r"ECAD wf-wan22-low: .*steps 4\u20137 of 8 \(stage 2 of a split run\)", log), log[-3000:]
    else:
        picked = re.search(r"picked: (\S+) ", "\n".join(entry["outputs"]["4"]["text"])).group(1)
        assert re.search(rf"ECAD {re.escape(picked)}: \d+/\d+ unit calls reused", log), log[-3000:]


@pytest.fixture(scope="module")
def browser_results(comfy_server, browser_ready, artifacts_dir):
    jobs = [(_load(p), artifacts_dir / f"workflow_{p.parent.name}_{p.stem}.png") for p in FILES]
    return dict(zip(FILES, browser_ready.load_workflows_in_browser(comfy_server.url, jobs)))


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_video_workflow_loads_in_browser_without_missing_nodes(browser_results, path):
    res = browser_results[path]
    assert res.missing == [] and res.raw["reported_missing"] == [], res.raw
    assert res.graph_node_count == len(_load(path)["nodes"])
    assert not res.page_errors, res.page_errors


def test_generators_rewrite_the_shipped_workflows(object_info):
    """scripts/make_video_workflows.py and make_evolve_workflow.py (one graph builder, scripts/ui_workflow.py)
    reproduce the shipped files exactly against today's nodes, Evolve's later optional widgets included."""
    import importlib
    import sys

    from test_workflows import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        video = importlib.import_module("make_video_workflows")
        pixart = importlib.import_module("make_evolve_workflow")
    finally:
        sys.path.remove(str(REPO / "scripts"))
    for name, (nodes_fn, groups) in video.WORKFLOWS.items():
        assert video.build(name, nodes_fn, groups, object_info) == _load(EXAMPLES / name), name
    assert pixart.build() == _load(EXAMPLES / pixart.NAME)
