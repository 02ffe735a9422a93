"""The nodes explain themselves in ComfyUI (issue #20, points 2-4 and 6), on a real v0.3.75 server: tooltips of
every input and output (/object_info), the node-docs pages where the frontend fetches them, the templates and
their thumbnails, the run statistics sent to the UI after each run (websocket; the toast in the browser), and
what a schedule used at another size or step count says in the log."""

from __future__ import annotations

import asyncio
import io
import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_comfy_harness import ksampler_prompt

from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy
REPO = Path(__file__).resolve().parents[1]
NODES = {
    "ApplyECADSchedule": "Apply ECAD Cache Schedule",
    "LoadECADSchedule": "Load ECAD Schedule",
    "PreviewECADSchedule": "Preview ECAD Schedule",
    "EvolveECADSchedule": "Evolve ECAD Schedule",
    "EvaluateECADSchedule": "Evaluate ECAD Schedule",
}
PIXART = "ecad_tiny_pixart_alpha"
STEPS = 4


def _get(srv, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(srv.url + path, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_every_input_and_output_has_a_tooltip(comfy_server):
    info = comfy_server.object_info()
    for node in NODES:
        d = info[node]
        for section in ("required", "optional"):
            for name, spec in d["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert isinstance(opts, dict) and opts.get("tooltip", "").strip(), f"{node}.{name} has no tooltip"
        tips = d.get("output_tooltips")
        assert tips and len(tips) == len(d["output"]) and all(t.strip() for t in tips), (node, tips)
    # a tooltip a node module declares is kept, the table only fills the gaps
    assert info["ApplyECADSchedule"]["input"]["required"]["offload_cache_to_cpu"][1]["tooltip"].startswith(
        "Keep cached outputs in system RAM"
    )


def test_node_docs_are_served_where_the_frontend_looks(comfy_server):
    """The frontend (1.32) fetches /extensions/<pack folder>/docs/<NodeName>.md for a custom node, the pack
    folder taken from the node's python_module."""
    info = comfy_server.object_info()
    for node, title in NODES.items():
        module = info[node]["python_module"]
        assert module.startswith("custom_nodes.")
        status, ctype, body = _get(comfy_server, f"/extensions/{module.split('.', 1)[1]}/docs/{node}.md")
        text = body.decode("utf-8")
        assert status == 200 and text.startswith(f"# {title}\n"), (node, ctype, text[:80])
        # the page covers every widget the node shows
        shown = [
            name
            for section in ("required", "optional")
            for name, spec in info[node]["input"].get(section, {}).items()
            if isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
        ]
        for name in shown:
            if node in ("EvolveECADSchedule", "EvaluateECADSchedule") and name in (
                "steps",
                "cfg",
                "sampler_name",
                "scheduler",
                "width",
                "height",
            ):
                continue  # the KSampler's own settings, named once for all on the page
            assert f"`{name}`" in text or (name.endswith("_weights") and "`*_weights`" in text), (node, name)
    guide = _get(comfy_server, f"/extensions/{module.split('.', 1)[1]}/docs/ApplyECADSchedule.md")[2].decode()
    for heading in ("## What do I pick?", "## What the speedup in the label means", "## Sharing a workflow"):
        assert heading in guide


def test_templates_are_listed_under_the_pack_with_thumbnails(comfy_server):
    from PIL import Image

    listed = comfy_server.get_json("/api/workflow_templates")
    names = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    pack = next(k for k, v in listed.items() if set(names) <= set(v))
    # each once: ComfyUI lists */example_workflows/*.json and */workflows/*.json alike (workflows/api/ is not)
    assert sorted(listed[pack]) == names, listed
    for name in names:
        status, ctype, body = _get(comfy_server, f"/api/workflow_templates/{pack}/{name}.jpg")
        assert status == 200 and ctype == "image/jpeg", (name, ctype)
        img = Image.open(io.BytesIO(body))
        assert img.format == "JPEG" and img.size == (512, 384), (name, img.size)
        # a picture, not a blank card: the diagram has light text and coloured cells on the dark ground
        colours = img.convert("RGB").getcolors(512 * 384)
        assert len(colours) > 50, name
        status, _, body = _get(comfy_server, f"/api/workflow_templates/{pack}/{name}.json")
        assert json.loads(body)["nodes"]
    # only workflows and their thumbnails in the folder the browser lists
    assert {p.suffix for p in (REPO / "example_workflows").iterdir()} == {".json", ".jpg"}


def test_preset_labels_say_what_the_speedup_is(comfy_server):
    opts = comfy_server.object_info("ApplyECADSchedule")["ApplyECADSchedule"]["input"]["required"]["preset"][0]
    shipped = {o.split(" · ")[0]: o for o in opts if not o.startswith("user/") and o != "off"}
    assert shipped["pixart-alpha-256-fast"] == "pixart-alpha-256-fast · PixArt-α · 1.97× measured on RTX A6000 @256px"
    assert shipped["flux-dev-1024-fast"].endswith("measured on RTX A6000 @1024px")
    for value in shipped.values():
        assert re.search(r" · \d+\.\d\d× measured on RTX A6000 @\d+px$", value), value


def _user_schedules(srv):
    d = srv.base_dir / "models" / "ecad_schedules" / "ui-help"
    d.mkdir(parents=True, exist_ok=True)
    lay = make_layout("pixart", 2)
    bits = [[1] * 6] + [[1, 0, 0, 1, 0, 0]] * (STEPS - 1)
    here = Schedule(lay, np.array(bits, bool), name="ui-here")
    here.save(d / "here.json")
    # made for 256x256 at 20 steps: used at 512x32, 4 steps the log says what to expect
    far = Schedule(
        lay,
        np.array([[1] * 6] + [[1, 0, 0, 1, 0, 0]] * 19, bool),
        name="ui-far",
        provenance={"resolution": [256, 256]},
    )
    far.save(d / "far.json")
    return "user/ui-help/here", "user/ui-help/far"


def _prompt(preset: str, seed: int) -> dict:
    p = ksampler_prompt(PIXART, "ui-help", seed)
    p["5"]["inputs"]["steps"] = STEPS
    for k in ("7", "8", "9"):
        p.pop(k)
    p["20"] = {
        "class_type": "ApplyECADSchedule",
        "inputs": {"model": ["1", 0], "preset": preset, "offload_cache_to_cpu": False},
    }
    p["5"]["inputs"]["model"] = ["20", 0]
    return p


async def _run_collecting(srv, prompt: dict) -> list[dict]:
    """Queues ``prompt`` as the harness's client and returns the ecad.stats messages it receives."""
    import aiohttp

    got = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{srv.url}/ws?clientId={srv.client_id}") as ws:
            pid = await asyncio.to_thread(srv.queue, prompt)
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                if m["type"] == "ecad.stats":
                    got.append(m["data"])
                if m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == pid:
                    break
                if m["type"] == "execution_error":
                    raise AssertionError(m["data"])
    return got


def test_run_statistics_reach_the_ui(comfy_server):
    srv = comfy_server
    here, _ = _user_schedules(srv)
    assert asyncio.run(asyncio.wait_for(_run_collecting(srv, _prompt("off", 71)), 300)) == []  # no schedule
    (stats,) = asyncio.run(asyncio.wait_for(_run_collecting(srv, _prompt(here, 71)), 300))
    # 2 blocks x 3 units, 4 steps, CFG batch: step 0 computes all 6, steps 1-3 reuse 4 of 6
    assert (stats["reused"], stats["computed"]) == (12, 12), stats
    assert (stats["height"], stats["width"], stats["steps"]) == (32, 512, STEPS)
    assert stats["expected_speedup"] and stats["expected_speedup"] > 1.0
    # the 'off' run of the same model, size and steps is the baseline of the measured speedup
    assert stats["uncached_seconds"] and stats["seconds"]
    text = stats["text"]
    assert text.startswith("ui-here: 12/24 unit calls reused (50%)"), text
    assert f"~{stats['expected_speedup']:.2f}x fewer MACs expected at 512x32, 4 steps" in text
    assert f"vs {stats['uncached_seconds']:.2f} s without a schedule" in text
    ratio = stats["uncached_seconds"] / stats["seconds"]
    assert f"ECAD ui-here: {ratio:.2f}x measured against the last run without a schedule" in srv.log_text()


def test_a_schedule_made_for_another_size_says_what_to_expect(comfy_server):
    srv = comfy_server
    _, far = _user_schedules(srv)
    (stats,) = asyncio.run(asyncio.wait_for(_run_collecting(srv, _prompt(far, 72)), 300))
    line = next(ln for ln in srv.log_text().splitlines() if "ECAD ui-far: made for" in ln)
    assert "made for 256x256, 20 steps (~" in line and "this run is 512x32, 4 steps: expect ~" in line, line
    assert f"expect ~{stats['expected_speedup']:.2f}x fewer MACs" in line


@pytest.mark.browser
def test_the_statistics_toast_shows_in_the_browser(comfy_server, browser_ready):
    """A run queued from the page: the server's ecad.stats message becomes a toast."""
    srv = comfy_server
    here, _ = _user_schedules(srv)
    probe = """
(async () => {
  const api = window.comfyAPI.api.api;
  window.__ecadLastStats = null;
  await api.queuePrompt(0, { output: __PROMPT__, workflow: {} });
  for (let i = 0; i < 600 && !window.__ecadLastStats; i++) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => setTimeout(r, 300));
  return { stats: window.__ecadLastStats, toasts: [...document.querySelectorAll(".p-toast-message")]
    .map((t) => t.innerText) };
})()
""".replace("__PROMPT__", json.dumps(_prompt(here, 73)))
    res = browser_ready.load_workflows_in_browser(
        srv.url, [(REPO / "example_workflows" / "ecad_pixart_alpha.json", None, False, probe)], timeout=400
    )[0]
    page = res.probe
    assert page.get("stats"), page
    assert any(page["stats"]["text"] in t for t in page["toasts"]), page


@pytest.mark.browser
def test_the_frontend_finds_the_templates_and_their_thumbnails(comfy_server, browser_ready):
    """What the template browser does (frontend 1.32): the pack's names from api.getWorkflowTemplates(), each
    card's picture from api.apiURL('/workflow_templates/<pack>/<name>.jpg')."""
    probe = """
(async () => {
  const api = window.comfyAPI.api.api;
  const listed = await api.getWorkflowTemplates();
  const pack = Object.keys(listed).find((k) => listed[k].includes("ecad_pixart_alpha"));
  const sizes = {};
  for (const name of listed[pack]) {
    const img = new Image();
    img.src = api.apiURL(`/workflow_templates/${pack}/${name}.jpg`);
    try { await img.decode(); sizes[name] = [img.naturalWidth, img.naturalHeight]; } catch (e) { sizes[name] = null; }
  }
  return { pack, names: listed[pack], sizes };
})()
"""
    res = browser_ready.load_workflows_in_browser(
        comfy_server.url, [(REPO / "example_workflows" / "ecad_pixart_alpha.json", None, False, probe)]
    )[0]
    page = res.probe
    names = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    # each once: ComfyUI lists example_workflows/ and workflows/ alike, so workflows/ holds no UI copies
    assert sorted(page["names"]) == names, page
    assert page["sizes"] == {n: [512, 384] for n in names}, page
