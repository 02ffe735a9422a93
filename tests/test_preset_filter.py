"""The Apply node's preset dropdown lists only schedules that fit the connected model.

Three layers: the safetensors-header probe (ecad_core.schedule.model_files), the server
route (GET /ecad/presets) in a real ComfyUI, and the frontend extension
(web/ecad.js) in headless chromium, re-filtering when the loader's file changes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import time
import urllib.parse

import pytest
import torch
from safetensors.torch import save_file
from support.schedule_corpus import REF
from test_comfy_apply import LAYOUTS, user_schedules  # noqa: F401 (fixture)
from test_comfy_harness import _ui_node

from comfy_harness import make_tiny
from ecad_core import make_layout
from ecad_core.schedule import model_files
from ecad_core.schedule.model_files import layout_of_file, layout_of_keys

FAMILY = {
    "ecad_tiny_pixart_alpha": "pixart",
    "ecad_tiny_pixart_sigma": "pixart",
    "ecad_tiny_flux_dev": "flux",
    "ecad_tiny_flux_schnell": "flux",
    "ecad_tiny_sd3": "sd3",
    "ecad_tiny_wan": "wan",
}


@pytest.mark.comfy
@pytest.mark.parametrize("model", sorted(FAMILY))
def test_header_probe_gives_the_adapter_layout(comfy_models, model):
    layout, family = layout_of_file(comfy_models[model])
    assert layout == LAYOUTS[model] and family == FAMILY[model]


def test_header_probe_diffusers_and_prefixed_keys_and_junk(tmp_path):
    from ecad_core.diffusers.tiny import tiny_flux_pipeline, tiny_pixart_pipeline

    px = tiny_pixart_pipeline("alpha", layers=3).transformer
    assert layout_of_keys(list(px.state_dict())) == (make_layout("pixart", 3), "pixart")
    fx = tiny_flux_pipeline().transformer
    n_double, n_single = len(fx.transformer_blocks), len(fx.single_transformer_blocks)
    assert layout_of_keys(list(fx.state_dict())) == (make_layout("flux", n_double, n_single), "flux")
    # a full checkpoint: the diffusion model's keys carry a prefix
    keys = [
        "model.diffusion_model." + k
        for k in (
            "x_embedder.proj.weight",
            "y_embedder.y_proj.fc1.weight",
            "blocks.0.attn.qkv.weight",
            "blocks.11.attn.qkv.weight",
        )
    ]
    assert layout_of_keys(keys + ["first_stage_model.decoder.conv_in.weight"])[0] == make_layout("pixart", 12)
    # not a DiT / not safetensors / truncated: None, never an exception
    save_file({"down_blocks.0.weight": torch.zeros(2)}, str(tmp_path / "unet.safetensors"))
    assert layout_of_file(tmp_path / "unet.safetensors") is None
    (tmp_path / "x.ckpt").write_bytes(b"\x80\x04not safetensors")
    assert layout_of_file(tmp_path / "x.ckpt") is None
    assert layout_of_file(tmp_path / "missing.safetensors") is None


def _presets(srv, loader, file):
    q = urllib.parse.urlencode({"loader": loader, "file": file})
    return srv.get_json("/ecad/presets?" + q)


@pytest.mark.comfy
def test_route_filters_by_model_file(comfy_server, user_schedules):  # noqa: F811
    srv = comfy_server
    every = srv.object_info("ApplyECADSchedule")["ApplyECADSchedule"]["input"]["required"]["preset"][0]
    flux = _presets(srv, "UNETLoader", make_tiny.file_name("ecad_tiny_flux_dev"))
    assert flux["model"].startswith("flux") and flux["options"][0] == "off"
    keys = {o.split(" · ")[0] for o in flux["options"][1:]}
    # both tiny FLUX variants share the 1 double + 1 single layout (other tests' FLUX schedules may be
    # in the shared server's folder too); no shipped preset (19 + 38 blocks) and no other family fits
    assert keys >= {
        f"user/{m}-{k}" for m in ("ecad_tiny_flux_dev", "ecad_tiny_flux_schnell") for k in ("full", "mixed")
    }, keys
    assert all(k.startswith("user/") for k in keys), keys
    assert not any(w in k for k in keys for w in ("pixart", "sd3", "wan")), keys
    wan = _presets(srv, "UNETLoader", make_tiny.file_name("ecad_tiny_wan"))
    wan_keys = {o.split(" · ")[0] for o in wan["options"][1:]}
    assert "user/ecad_tiny_wan-full" in wan_keys and "user/ecad_tiny_sd3-full" not in wan_keys  # Wan's own layout
    assert not any("pixart" in o or "flux" in o for o in wan["options"])
    # unknown file or loader: every schedule (the node still checks at run time)
    for loader, file in (("UNETLoader", "no-such-file.safetensors"), ("LoraLoader", "x"), ("", "")):
        assert _presets(srv, loader, file) == {"model": None, "options": every}


def _filter_workflow(model):
    M = {"name": "MODEL", "type": "MODEL", "links": [1], "slot_index": 0}
    nodes = [
        _ui_node(1, "UNETLoader", [make_tiny.file_name(model), "default"], outputs=[M]),
        _ui_node(
            2,
            "ApplyECADSchedule",
            ["off", False],
            pos=(400, 0),
            inputs=[
                {"name": "model", "type": "MODEL", "link": 1},
                {"name": "schedule", "type": "ECAD_SCHEDULE", "link": None, "shape": 7},
            ],
            outputs=[{"name": "MODEL", "type": "MODEL", "links": [], "slot_index": 0}],
        ),
    ]
    return {
        "id": "ecad-filter-test",
        "revision": 0,
        "last_node_id": 2,
        "last_link_id": 1,
        "nodes": nodes,
        "links": [[1, 1, 0, 2, 0, "MODEL"]],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


PROBE = """(async () => {{
  const f = window.__ecadPresetFilter;
  if (!f) return {{probe_error: "web/ecad.js did not load"}};
  const nodes = window.app.graph.nodes;
  const apply = nodes.find((n) => n.type === "ApplyECADSchedule");
  const values = () => [...apply.widgets.find((w) => w.name === "preset").options.values];
  await f.refreshAll();
  const before = values();
  const loader = nodes.find((n) => n.type === "UNETLoader");
  const w = loader.widgets.find((w) => w.name === "unet_name");
  w.value = "{}";
  w.callback(w.value);          // what picking a file in the dropdown does
  await new Promise((r) => setTimeout(r, 500));
  await f.refreshAll();
  return {{before, after: values(), model: apply.__ecadModel}};
}})()""".format(make_tiny.file_name("ecad_tiny_pixart_alpha"))


@pytest.mark.comfy
@pytest.mark.browser
def test_frontend_dropdown_follows_the_connected_model(
    comfy_server,
    user_schedules,  # noqa: F811 - the fixture imported from test_comfy_apply
    browser_ready,
    artifacts_dir,
):
    res = browser_ready.load_workflows_in_browser(
        comfy_server.url, [(_filter_workflow("ecad_tiny_flux_dev"), artifacts_dir / "preset_filter.png", False, PROBE)]
    )[0]
    probe = res.probe
    assert isinstance(probe, dict) and "probe_error" not in probe, json.dumps(probe)[:2000]
    before = {o.split(" · ")[0] for o in probe["before"]}
    after = {o.split(" · ")[0] for o in probe["after"]}
    assert "off" in before and "user/ecad_tiny_flux_dev-mixed" in before
    assert not any(k.startswith("pixart") or "pixart" in k for k in before), before
    assert "user/ecad_tiny_pixart_alpha-mixed" in after and "user/ecad_tiny_flux_dev-mixed" not in after, after
    assert probe["model"].startswith("pixart")
    assert not res.page_errors, res.page_errors


def _header_file(path, n_blocks=2, pad_to=0):
    """A .safetensors header naming the tensors of a PixArt with ``n_blocks`` blocks (no tensor data
    beyond 2 bytes), padded with spaces (as safetensors allows) to ``pad_to`` bytes."""
    t = {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}
    keys = {"x_embedder.proj.weight": t, "y_embedder.y_proj.fc1.weight": t}
    keys.update({f"blocks.{i}.attn.qkv.weight": t for i in range(n_blocks)})
    head = json.dumps(keys).encode()
    head += b" " * max(0, pad_to - len(head))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"\0\0")
    return path


@pytest.fixture
def fresh_probe_cache(monkeypatch):
    monkeypatch.setattr(model_files, "_cache", {}, raising=False)


def test_header_probe_caps_the_header_length(tmp_path, fresh_probe_cache):
    # a 10 MiB header is parsed; one byte more is not even read (a 99 MB one took 35 s)
    cap = 10 * 1024 * 1024
    ok = _header_file(tmp_path / "ok.safetensors", pad_to=cap)
    assert layout_of_file(ok) == (make_layout("pixart", 2), "pixart")
    huge = _header_file(tmp_path / "huge.safetensors", pad_to=cap + 1)
    assert layout_of_file(huge) is None


def test_header_probe_never_opens_a_fifo_or_device(tmp_path, fresh_probe_cache):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    done = {}
    for p in (fifo, "/dev/zero"):
        t = threading.Thread(target=lambda p=p: done.update({str(p): layout_of_file(p)}), daemon=True)
        t.start()
        t.join(10)
        if t.is_alive():  # before the fix: open() waits for a writer; let it go before failing
            with open(fifo, "wb"):
                pass
            t.join(10)
            pytest.fail(f"probing {p} blocked")
        assert done[str(p)] is None


def test_header_probe_is_cached_by_path_mtime_and_size(tmp_path, fresh_probe_cache, monkeypatch):
    p = _header_file(tmp_path / "m.safetensors", n_blocks=2)
    reads = []
    real = model_files.header_keys
    monkeypatch.setattr(model_files, "header_keys", lambda path: reads.append(path) or real(path))
    for _ in range(3):
        assert layout_of_file(p)[0] == make_layout("pixart", 2)
    assert len(reads) == 1
    st = p.stat()
    _header_file(p, n_blocks=3)  # another model under the same name (another size): read again
    assert layout_of_file(p)[0] == make_layout("pixart", 3) and len(reads) == 2
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: read again
    assert layout_of_file(p)[0] == make_layout("pixart", 3) and len(reads) == 3
    assert layout_of_file(p)[0] == make_layout("pixart", 3) and len(reads) == 3


@pytest.mark.comfy
def test_route_works_off_the_event_loop(comfy_server, ecad_reference):
    """While /ecad/presets reads a 10 MB header and lists 250 schedule files it has not seen yet
    (seconds), other requests are answered: it runs in a worker thread, not on ComfyUI's loop."""
    srv = comfy_server
    many = srv.base_dir / "models" / "ecad_schedules" / "route-many"
    many.mkdir(parents=True)
    first = many / "copy-000.json"
    shutil.copy(REF / "schedules_in_paper/flux_256/ours_fast.json", first)
    for i in range(1, 250):
        os.link(first, many / f"copy-{i:03d}.json")
    models = srv.base_dir / "models" / "diffusion_models"
    models.mkdir(parents=True, exist_ok=True)
    big = _header_file(models / "ecad-big-header.safetensors", n_blocks=100000)
    assert 8 * 2**20 < big.stat().st_size < 10 * 2**20  # under the cap: parsed
    got = {}

    def presets():
        got["body"] = _presets(srv, "UNETLoader", big.name)
        got["done"] = time.monotonic()

    try:
        t = threading.Thread(target=presets)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        srv.system_stats()
        t_stats = time.monotonic()
        t.join(300)
        assert "done" in got, "no answer from /ecad/presets"
        assert t_stats < got["done"], (
            f"/system_stats waited for /ecad/presets ({t_stats - t0:.2f} s; presets done "
            f"{got['done'] - t0:.2f} s after it was asked)"
        )
        assert t_stats - t0 < 1.5
        assert got["body"]["model"] == "pixart: pixart: 100000 main blocks x attn1/attn2/ff" and got["body"][
            "options"
        ] == ["off"]
    finally:
        shutil.rmtree(many, ignore_errors=True)
        big.unlink(missing_ok=True)
