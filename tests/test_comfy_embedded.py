"""A shared workflow carries its schedule (issue #20, point 1): Apply and Load embed the text of the user's own
schedule they name, and a machine without that file runs the workflow from the embedded copy.

The round trip: Evolve -> Apply on one server; in the browser the picked point is chosen in Apply's preset
dropdown (web/ecad.js embeds it) and the workflow is exported; a fresh server (fresh base dir, no schedule file)
runs it: same latent. Then the save route, a different local file of the same name, and a bad embedded copy.
"""

from __future__ import annotations

import json
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from test_comfy_evolve import _pixart_evolve_prompt, _report, _search_dir
from test_comfy_harness import _read_latent, ksampler_prompt

from comfy_harness import make_tiny
from comfy_harness.server import ComfyServer, PromptValidationError
from ecad_core import Schedule, load_schedule, loads_schedule, make_layout

pytestmark = [pytest.mark.comfy, pytest.mark.slow]
PIXART = "ecad_tiny_pixart_alpha"
STEPS = 4
SEARCH = "embed-src"
EXAMPLE = Path(__file__).resolve().parents[1] / "example_workflows" / "ecad_evolve_pixart_alpha.json"


def _apply_prompt(seed: int, apply_inputs: dict) -> dict:
    p = ksampler_prompt(PIXART, "embedded", seed)
    p["5"]["inputs"]["steps"] = STEPS
    for k in ("7", "8", "9"):
        p.pop(k)
    p["20"] = {
        "class_type": "ApplyECADSchedule",
        "inputs": {"model": ["1", 0], "preset": "off", "offload_cache_to_cpu": False, **apply_inputs},
    }
    p["5"]["inputs"]["model"] = ["20", 0]
    return p


def _latent(srv, prompt):
    entry = srv.run(prompt, timeout=300)
    return _read_latent(srv.output_files(entry, "latents")[0])


# the JS run in the page: pick the user preset in Apply's dropdown the way a click does (widget callback), wait
# for the embedding, export the workflow and the API prompt
PICK_AND_EXPORT = """
(async () => {
  const node = app.graph.nodes.find((n) => n.type === "ApplyECADSchedule");
  const preset = node.widgets.find((w) => w.name === "preset");
  const embedded = node.widgets.find((w) => w.name === "embedded_schedule");
  preset.value = %s;
  preset.callback(preset.value);
  for (let i = 0; i < 100 && !embedded.value; i++) await new Promise((r) => setTimeout(r, 50));
  return {
    text: embedded.value,
    visible: node.isWidgetVisible ? node.isWidgetVisible(embedded) : null,
    workflow: app.graph.serialize(),
    prompt: (await app.graphToPrompt()).output,
  };
})()
"""


@pytest.fixture(scope="module")
def exported(comfy_server, browser_ready):
    """Evolve -> Apply on the session server, then the picked point chosen as Apply's preset in the browser and
    the workflow exported: (latent of the Evolve run, picked schedule's dropdown value, exported workflow, its
    API prompt, the page's answer)."""
    srv = comfy_server
    evolve = _pixart_evolve_prompt(output_name=SEARCH, prefix="embed-evolve", population=4)
    entry = srv.run(evolve, timeout=600)
    latent = _read_latent(srv.output_files(entry, "latents")[0])
    picked = re.search(r"picked: (\S+) - ", _report(entry)).group(1)
    front = _search_dir(srv, SEARCH) / "front"
    path = next(p for p in front.glob("*.json") if p.name != "front.json" and load_schedule(p).name == picked)
    key = f"user/{SEARCH}/front/{path.stem}"
    value = next(
        o
        for o in srv.object_info("ApplyECADSchedule")["ApplyECADSchedule"]["input"]["required"]["preset"][0]
        if o.split(" · ")[0] == key
    )
    res = browser_ready.load_workflows_in_browser(
        srv.url, [(EXAMPLE, None, False, PICK_AND_EXPORT % json.dumps(value))]
    )[0]
    page = res.probe
    assert isinstance(page, dict) and "probe_error" not in page, page
    shown = [srv.output_file(i) for i in entry["outputs"]["30"]["images"]]
    return latent, value, path, page, shown


def test_the_exported_workflow_runs_on_a_fresh_server_without_the_file(exported, comfy_models, tmp_path):
    latent, value, path, page, _ = exported
    # the export carries the schedule: the widget is hidden (advanced), its value is the file's schedule
    assert page["visible"] is False
    assert loads_schedule(page["text"]) == load_schedule(path)
    apply_ui = next(n for n in page["workflow"]["nodes"] if n["type"] == "ApplyECADSchedule")
    assert page["text"] in apply_ui["widgets_values"]
    apply_api = next(n for n in page["prompt"].values() if n["class_type"] == "ApplyECADSchedule")["inputs"]
    assert apply_api["preset"] == value and apply_api["embedded_schedule"] == page["text"]
    # the exported Apply, without Evolve's link, on a fresh server: no models/ecad_schedules at all
    inputs = {"preset": value, "embedded_schedule": page["text"]}
    with ComfyServer(models_root=make_tiny.DEFAULT_MODELS_ROOT, ensure_models=False) as fresh:
        user = fresh.base_dir / "models" / "ecad_schedules"
        assert not user.exists()
        assert torch.equal(_latent(fresh, _apply_prompt(11, inputs)), latent)  # the same image
        key = value.split(" · ")[0]
        log = fresh.log_text()
        assert f"schedule {key!r} is not on this machine" in log and "using the copy embedded" in log
        # Load uses the embedded copy the same way
        p = _apply_prompt(11, {})
        p["21"] = {
            "class_type": "LoadECADSchedule",
            "inputs": {"schedule_file": value, "embedded_schedule": page["text"]},
        }
        p["20"]["inputs"]["schedule"] = ["21", 0]
        assert torch.equal(_latent(fresh, p), latent)

        # offered: saved into models/ecad_schedules, then the file is used, quietly
        saved = fresh.post_json("/ecad/save_embedded", {"preset": value, "text": page["text"]})
        assert saved["saved"] is True and load_schedule(saved["path"]) == load_schedule(path)
        assert saved["path"] == str(user / f"{key[len('user/') :]}.json")
        again = fresh.post_json("/ecad/save_embedded", {"preset": value, "text": page["text"]})
        assert again["saved"] is False and "already saved" in again["message"]
        n_logged = fresh.log_text().count("using the copy embedded")
        assert torch.equal(_latent(fresh, _apply_prompt(11, inputs)), latent)
        assert fresh.log_text().count("using the copy embedded") == n_logged

        # a local file of that name with other content: the embedded copy wins and the log says so
        lay = load_schedule(path).layout
        other = Schedule.full(lay, STEPS, name="someone-elses")
        other.save(saved["path"])
        assert torch.equal(_latent(fresh, _apply_prompt(11, inputs)), latent)
        assert "differs from the copy embedded in the workflow: the embedded copy is used" in fresh.log_text()
        refused = fresh.post_json("/ecad/save_embedded", {"preset": value, "text": page["text"]})
        assert refused["saved"] is False and "not replaced" in refused["message"]
        assert load_schedule(saved["path"]) == other  # never replaced

        # a bad embedded copy: a validation error naming it, from the files' parser
        with pytest.raises(PromptValidationError) as e:
            fresh.queue(_apply_prompt(12, {"preset": value, "embedded_schedule": '{"format": "comfyui-ecad/sch'}))
        msg = json.dumps(e.value.node_errors)
        assert f"the copy of {key!r} embedded in the workflow" in msg and "not valid JSON" in msg


def test_evolve_shows_the_picked_schedule_beside_the_front_plot(exported):
    from PIL import Image

    *_, path, _, shown = exported
    assert [p.name.split("_")[1] for p in shown] == ["front", "picked"], shown
    picked = load_schedule(path)
    # the Preview node's picture of the picked point: 4 px cells, one row per step, one column per unit
    img = np.asarray(Image.open(shown[1]).convert("RGB"))
    assert img.shape == (picked.steps * 4, picked.layout.n_units * 4, 3)
    bright = img[1::4, 1::4].max(axis=2) > 60  # a cell's inside: computed cells are in colour, reused ones dark
    assert np.array_equal(bright, picked.effective_bits())


def test_validation_without_file_or_copy_still_names_the_preset(comfy_server):
    with pytest.raises(PromptValidationError) as e:
        comfy_server.queue(_apply_prompt(13, {"preset": "user/nowhere · PixArt-α · 2.00×"}))
    assert "ECAD preset 'user/nowhere' not found" in json.dumps(e.value.node_errors)


def test_schedule_text_route(comfy_server):
    srv = comfy_server
    shipped = srv.get_json("/ecad/schedule_text?preset=pixart-alpha-256-fast")
    assert shipped == {"key": "pixart-alpha-256-fast", "shipped": True, "text": ""}
    assert srv.get_json("/ecad/schedule_text?preset=off")["text"] == ""
    user = srv.base_dir / "models" / "ecad_schedules"
    user.mkdir(parents=True, exist_ok=True)
    s = Schedule.full(make_layout("pixart", 2), STEPS, name="route-check")
    s.save(user / "route-check.json")
    mine = srv.get_json("/ecad/schedule_text?preset=user/route-check")
    assert mine["shipped"] is False and loads_schedule(mine["text"]) == s
    for bad in (
        {"preset": "pixart-alpha-256-fast", "text": s.dumps()},
        {"preset": "user/../escape", "text": s.dumps()},
        ["not", "an", "object"],
        {"preset": "user/route-check-2"},
    ):
        with pytest.raises(urllib.error.HTTPError) as e:
            srv.post_json("/ecad/save_embedded", bad)
        assert e.value.code == 400
    assert not (srv.base_dir / "models" / "escape.json").exists()


# the page after loading: what each Apply node embeds, then the node menu's save entry clicked on node 2
MENU_PROBE = """
(async () => {
  await new Promise((r) => setTimeout(r, 1000));
  const node = (id) => app.graph.getNodeById(id);
  const embedded = (id) => node(id).widgets.find((w) => w.name === "embedded_schedule").value;
  const out = { filled: embedded(1), missing: embedded(2), different: embedded(3) };
  const menu = [];
  node(2).getExtraMenuOptions(app.canvas, menu);
  out.menu = menu.filter(Boolean).map((o) => o.content);
  const save = menu.find((o) => o && o.content === "ECAD: save embedded schedule");
  out.saved = save ? await save.callback() : null;
  // picking a schedule the server cannot read: the previous pick's copy must not stay under the new name
  const preset = node(3).widgets.find((w) => w.name === "preset");
  preset.value = "user/menu/broken";
  preset.callback(preset.value);
  for (let i = 0; i < 100 && embedded(3); i++) await new Promise((r) => setTimeout(r, 50));
  out.after_broken = embedded(3);
  return out;
})()
"""


def _apply_node(nid: int, preset: str, embedded: str) -> dict:
    return {
        "id": nid,
        "type": "ApplyECADSchedule",
        "pos": [0, 200 * nid],
        "size": [380, 130],
        "flags": {},
        "order": nid,
        "mode": 0,
        "inputs": [{"name": "model", "type": "MODEL", "link": None}],
        "outputs": [{"name": "MODEL", "type": "MODEL", "links": [], "slot_index": 0}],
        "properties": {"Node name for S&R": "ApplyECADSchedule"},
        "widgets_values": [preset, False, False, embedded],
    }


@pytest.mark.browser
def test_the_page_embeds_keeps_and_saves_copies(comfy_server, browser_ready):
    """On load: an Apply naming a local schedule without a copy (a workflow saved before embedding) gets one;
    a copy in the workflow is kept, for a missing file and for a local file with other content; the node
    menu saves a copy into models/ecad_schedules."""
    srv = comfy_server
    user = srv.base_dir / "models" / "ecad_schedules" / "menu"
    user.mkdir(parents=True, exist_ok=True)
    lay = make_layout("pixart", 2)
    local = Schedule.full(lay, STEPS, name="local")
    local.save(user / "a.json")
    theirs = Schedule.every_n(lay, STEPS, 2, name="theirs")
    (user / "b.json").unlink(missing_ok=True)
    (user / "broken.json").write_text('{"format": "comfyui-ecad/sch')
    wf = {
        "id": "00000000-0000-4000-8000-000000000020",
        "revision": 0,
        "last_node_id": 3,
        "last_link_id": 0,
        "nodes": [
            _apply_node(1, "user/menu/a · PixArt-α", ""),
            _apply_node(2, "user/menu/b · PixArt-α", theirs.dumps()),
            _apply_node(3, "user/menu/a · PixArt-α", theirs.dumps()),
        ],
        "links": [],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }
    res = browser_ready.load_workflows_in_browser(srv.url, [(wf, None, False, MENU_PROBE)])[0]
    page = res.probe
    assert isinstance(page, dict) and "probe_error" not in page, page
    assert loads_schedule(page["filled"]) == local
    assert loads_schedule(page["missing"]) == theirs and loads_schedule(page["different"]) == theirs
    assert "ECAD: save embedded schedule" in page["menu"]
    assert page["saved"]["saved"] is True, page["saved"]
    assert load_schedule(user / "b.json") == theirs
    assert load_schedule(user / "a.json") == local  # never replaced
    assert page["after_broken"] == ""
