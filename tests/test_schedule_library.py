"""The nodes' schedule library (nodes/library.py) and preview against bad, edited and huge schedule files.

In-process tests use ComfyUI's real ``folder_paths`` (from .cache/ComfyUI) with the user folder
pointed at a temporary directory; the ``comfy`` tests run a real ComfyUI server.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import re
import shutil
import sys
import time
import tracemalloc
import types
import urllib.parse

import numpy as np
import pytest
from support.schedule_corpus import REPO, fuzzed_files, write_bad_files, write_special_files

from ecad_core import Schedule, ScheduleError, families, load_schedule, loads_schedule, make_layout

PACK = "comfyui_ecad_libtest"


def _pack_module(name: str):
    """``<pack>.nodes.<name>`` imported the way ComfyUI imports the pack (one package, relative imports),
    without nodes/__init__ (which registers every node and the HTTP route)."""
    if PACK not in sys.modules:
        pkg = types.ModuleType(PACK)
        pkg.__path__ = [str(REPO)]
        sys.modules[PACK] = pkg
        sub = types.ModuleType(f"{PACK}.nodes")
        sub.__path__ = [str(REPO / "nodes")]
        sys.modules[f"{PACK}.nodes"] = sub
    return importlib.import_module(f"{PACK}.nodes.{name}")


@pytest.fixture
def lib(comfy_dir, tmp_path, monkeypatch):
    """nodes.library with a fresh cache and its user folder (real folder_paths) at tmp_path/user."""
    if str(comfy_dir) not in sys.path:
        sys.path.append(str(comfy_dir))  # appended: ComfyUI's nodes.py must not shadow this repo's nodes/
    import folder_paths

    library = _pack_module("library")
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, library.FOLDER_NAME, ([str(user)], {".json"}))
    for name, empty in (("_cache", {}), ("_digests", {}), ("_warned", set())):
        monkeypatch.setattr(library, name, empty, raising=False)
    monkeypatch.setattr(library, "user", user, raising=False)
    return library


def _keys(values):
    return {v.split(" · ")[0] for v in values}


def _skips(caplog, path):
    return [
        r for r in caplog.records if "skipping unreadable schedule" in r.getMessage() and str(path) in r.getMessage()
    ]


def test_library_lists_every_good_file_and_logs_each_bad_one_once(lib, caplog):
    user = lib.user
    named = write_bad_files(user / "bad") + write_special_files(user / "special")
    fuzzed = fuzzed_files(user / "fuzz")
    good = []
    for p in sorted((REPO / "schedules").glob("pixart-alpha-256-f*.json")):
        good.append(shutil.copy(p, user / p.name))
    odd = user / "odd-but-valid.json"  # junk metrics a label must survive
    Schedule.full(
        make_layout("pixart", 2), 3, name="odd", metrics={"expected_speedup": {"a": [1, None]}, "compute_fraction": -1}
    ).save(odd)
    good.append(odd)
    # fuzzed files are good or bad as the loader says; every named one is bad
    bad = [p for p, _ in named]
    for p in fuzzed:
        try:
            load_schedule(p)
            good.append(p)
        except ScheduleError:
            bad.append(p)
    assert len(bad) > 300
    rel = lambda p: "user/" + os.path.relpath(p, user)[: -len(".json")]
    shipped = {p.stem for p in (REPO / "schedules").glob("*.json")}

    with caplog.at_level(logging.WARNING, logger="ecad"):
        for _ in range(3):
            listed = _keys(lib.options())
            assert listed == shipped | {rel(p) for p in good}
        # the pack's class
        pixart28 = importlib.import_module(f"{PACK}.ecad_core.schedule.layout").make_layout("pixart", 28)
        assert _keys(lib.options_fitting(pixart28)) == {
            rel(p) for p in good if load_schedule(p).layout == make_layout("pixart", 28)
        } | {k for k in shipped if k.startswith("pixart-")}
    for p in bad:
        logged = _skips(caplog, p)
        assert len(logged) == 1, (p, [r.getMessage() for r in logged])
        with pytest.raises(lib.ScheduleError) as e:  # the pack's own class (the pack is its own package)
            lib.resolve(rel(p))
        assert str(p) in str(e.value)
        assert str(e.value) in logged[0].getMessage()  # the log line gives the reason too
    for p, msg in named:
        assert msg in _skips(caplog, p)[0].getMessage()
    assert not [
        r for r in caplog.records if "skipping" in r.getMessage() and not any(str(p) in r.getMessage() for p in bad)
    ]
    assert lib.resolve(rel(odd)).name == "odd" and lib.speedup_of(lib.resolve(rel(odd))) is None


def test_an_unexpected_error_from_one_file_costs_that_file_only(lib, caplog, monkeypatch):
    """The last-resort guard: a parser bug that is not a ScheduleError is logged as a skip, once."""
    for name in ("a", "b", "c"):
        Schedule.full(make_layout("pixart", 2), 3, name=name).save(lib.user / f"{name}.json")
    real = lib.load_schedule

    def buggy(path):
        if path.name == "b.json":
            raise TypeError("unhashable type: 'list'")
        return real(path)

    monkeypatch.setattr(lib, "load_schedule", buggy)
    with caplog.at_level(logging.WARNING, logger="ecad"):
        for _ in range(2):
            assert {"user/a", "user/c"} <= _keys(lib.options()) and "user/b" not in _keys(lib.options())
    logged = _skips(caplog, lib.user / "b.json")
    assert len(logged) == 1 and "TypeError: unhashable type: 'list'" in logged[0].getMessage()
    with pytest.raises(lib.ScheduleError, match=r"b\.json: cannot be read \(TypeError: unhashable type"):
        lib.resolve("user/b")


def test_fingerprint_follows_the_content_and_hashes_only_on_change(lib, monkeypatch):
    p = lib.user / "s.json"
    lay = make_layout("pixart", 2)
    Schedule.full(lay, 4, name="s").save(p)
    reads = []
    real = lib.read_regular_file
    monkeypatch.setattr(lib, "read_regular_file", lambda *a: reads.append(a) or real(*a))
    first = lib.fingerprint("user/s · PixArt")
    assert first == lib.fingerprint("user/s") and len(reads) == 1  # same file: the stat fast path
    st = p.stat()
    # same size, same mtime as before: a different content must still give a different fingerprint
    bits = np.ones((4, lay.n_units), bool)
    bits[2, 1] = False
    Schedule(lay, bits, name="s").save(p)
    assert p.stat().st_size == st.st_size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = lib.fingerprint("user/s")
    assert second != first and len(reads) == 2
    # rewriting the same content re-hashes (new mtime) but keeps the fingerprint: no needless re-run
    Schedule(lay, bits, name="s").save(p)
    assert lib.fingerprint("user/s") == second and len(reads) == 3
    assert lib.fingerprint("user/gone") == "user/gone: missing"
    assert lib.fingerprint("off") == "off: missing"


def test_a_search_folder_lists_its_schedules_only(lib, caplog, tmp_path, capsys):
    """Everything a search writes into its folder (here the CLI's, latency objective: it writes the most)
    is either listed as a schedule or left out silently: no bookkeeping file is logged as unreadable."""
    from ecad_core.cli import main

    out = lib.user / "tiny-search"
    (tmp_path / "p.txt").write_text("a red cat\n")
    assert (
        main(
            [
                "evolve",
                "--model",
                "tiny:pixart-alpha",
                "--prompts",
                str(tmp_path / "p.txt"),
                "--steps",
                "3",
                "--height",
                "64",
                "--width",
                "64",
                "--population",
                "2",
                "--generations",
                "1",
                "--out",
                str(out),
                "--quiet",
                "--cost",
                "latency",
            ]
        )
        == 0
    )
    capsys.readouterr()
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    front = {f for f in written if f.startswith("front/") and f.endswith(".json") and f != "front/front.json"}
    assert front and written == front | {
        "checkpoint.safetensors",
        "progress.json",
        "evaluations.csv",
        "references.pt",
        "latency_cost.json",
        "unit_probe.safetensors",
        "picked.json",
        "front/front.json",
        "front/front.png",
    }, written
    with caplog.at_level(logging.WARNING, logger="ecad"):
        listed = {k for k in _keys(lib.options()) if k.startswith("user/")}
    assert not [r.getMessage() for r in caplog.records], "a search's own file was logged"
    # the front's points and the CLI's picked point, nothing else
    assert listed == {f"user/tiny-search/{f[: -len('.json')]}" for f in front | {"picked.json"}}


def test_a_users_schedule_may_have_a_search_files_name(lib, caplog):
    """progress.json, front.json and latency_cost.json are a search's bookkeeping only inside a search folder
    (one holding a checkpoint or a front folder); anywhere else they are the user's schedules."""
    names = ("progress.json", "front.json", "latency_cost.json")
    mine = [lib.user / n for n in names] + [lib.user / "mine" / n for n in names]
    search = lib.user / "search"
    bookkeeping = [search / "progress.json", search / "latency_cost.json", search / "front" / "front.json"]
    for p in mine + bookkeeping:
        Schedule.full(make_layout("pixart", 2), 3, name=p.stem).save(p)
    (search / "checkpoint.safetensors").write_bytes(b"")
    # a search folder recognised by its front folder alone (a search stopped before its first checkpoint)
    early = lib.user / "early"
    (early / "front").mkdir(parents=True)
    Schedule.full(make_layout("pixart", 2), 3, name="progress").save(early / "progress.json")
    with caplog.at_level(logging.WARNING, logger="ecad"):
        listed = {k for k in _keys(lib.options()) if k.startswith("user/")}
    rel = lambda p: "user/" + p.relative_to(lib.user).with_suffix("").as_posix()
    assert listed == {rel(p) for p in mine}
    assert lib.resolve(rel(lib.user / "progress.json")).name == "progress"
    assert not caplog.records


def test_an_embedded_copy_is_read_like_a_file(lib, tmp_path, caplog):
    """A workflow's embedded schedule goes through the files' parser and size limit; the local file wins only
    when it has the same content, and a save never replaces a file."""
    value = "user/shared · PixArt-α · 2.00× MACs"
    bad_dir = tmp_path / "bad"
    for path, msg in write_bad_files(bad_dir):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a workflow holds text: undecodable bytes cannot be embedded
        if not text.strip():
            continue  # an empty widget means no copy: the file is used (checked below)
        with pytest.raises(lib.ScheduleError) as e:
            lib.resolve_with(value, text)
        assert "the copy of 'user/shared' embedded in the workflow" in str(e.value), (path.name, str(e.value))
        assert msg in str(e.value) or "not valid JSON" in str(e.value), (path.name, msg, str(e.value))
        assert lib.validate(value, text, "ECAD preset") == str(e.value)  # the node error at validation
    with pytest.raises(lib.ScheduleError, match="too large"):
        lib.embedded_copy(value, " " * (lib.MAX_FILE_BYTES + 1))

    same = lambda a, b: a.to_json_dict() == b.to_json_dict()  # the pack's Schedule class is its own
    mine = Schedule.full(make_layout("pixart", 2), 3, name="shared", metrics={"expected_speedup": 2.0})
    text = mine.dumps()
    with caplog.at_level(logging.INFO, logger="ecad"):
        assert lib.validate(value, text, "ECAD preset") is True  # no file, a copy: valid
        assert same(lib.resolve_with(value, text), mine)
        assert "is not on this machine" in caplog.text
        saved = lib.save_embedded(value, text)
        assert saved["saved"] and load_schedule(lib.user / "shared.json") == mine
        caplog.clear()
        assert same(lib.resolve_with(value, text), mine) and not caplog.text  # the file has the copy's content
        other = Schedule.full(make_layout("pixart", 2), 3, name="someone-else")
        other.save(lib.user / "shared.json")
        assert same(lib.resolve_with(value, text), mine)
        assert "differs from the copy embedded in the workflow: the embedded copy is used" in caplog.text
        refused = lib.save_embedded(value, text)
        assert not refused["saved"] and "not replaced" in refused["message"]
        assert load_schedule(lib.user / "shared.json") == other
    assert same(lib.resolve_with(value, ""), other)  # no copy: the file, as before
    for bad in ("pixart-alpha-256-fast", "user/../x", "user/.hidden/x", "user//x"):
        with pytest.raises(lib.ScheduleError):
            lib.save_embedded(bad, text)
    assert lib.embeddable_text("pixart-alpha-256-fast · PixArt-α · 1.97×") == {
        "key": "pixart-alpha-256-fast",
        "shipped": True,
        "text": "",
    }
    assert loads_schedule(lib.embeddable_text(value)["text"]) == other


def _cells(img, cy, cx):
    return img[::cy, ::cx]


def test_preview_small_schedules_are_pixel_exact(comfy_dir):
    if str(comfy_dir) not in sys.path:
        sys.path.append(str(comfy_dir))
    nodes = _pack_module("preview_node")
    lay = make_layout("pixart", 2)
    bits = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1]], bool)
    img = nodes.schedule_image(Schedule(lay, bits))[0].numpy()
    assert img.shape == (12, 24, 3)
    col = {c: np.array(families.get("pixart").color(c), np.float32) for c in ("attn1", "attn2", "ff")}
    for s in range(3):
        for u, comp in enumerate(["attn1", "attn2", "ff"] * 2):
            want = col[comp] if bits[s, u] else np.full(3, 0.12, np.float32)
            cell = img[4 * s : 4 * s + 4, 4 * u : 4 * u + 4]
            last = 4 * u + 3 in (11, 23)  # each block's last pixel column is darkened
            assert np.array_equal(cell[:, :3], np.broadcast_to(want, (4, 3, 3)))
            assert np.allclose(cell[:, 3], want * (0.5 if last else 1.0))
    # FLUX.1 at 1000 steps: 4-pixel columns still fit, rows get 1 pixel; nothing summarised
    flux = Schedule.full(make_layout("flux", 19, 38), 1000)
    assert tuple(nodes.schedule_image(flux).shape) == (1, 1000, 684, 3) and nodes._picture_note(flux) is None


def test_preview_of_the_largest_schedule_is_bounded(comfy_dir):
    """The largest schedule a file may hold (2048 units, 488 steps) gives at most 1024 x 1024 pixels,
    each the mean colour of its bin, in bounded memory (a 6 MB file once made a 98304 x 1000 PNG)."""
    if str(comfy_dir) not in sys.path:
        sys.path.append(str(comfy_dir))
    nodes = _pack_module("preview_node")
    lay = make_layout("dit_blocks", 1024, 1024)
    bits = np.zeros((488, 2048), bool)
    bits[:, ::2] = True  # every other unit recomputed: each 2-unit bin is half bright
    s = Schedule(lay, bits)
    tracemalloc.start()
    t0 = time.perf_counter()
    img = nodes.schedule_image(s)[0].numpy()
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert img.shape == (488, 1024, 3)
    assert peak < 80 * 2**20 and took < 10, (peak, took)
    bright = np.array(families.get("dit_blocks").color("block"), np.float32)
    assert np.allclose(img[1:], (bright + 0.12) / 2)  # step 0 is always computed: fully bright
    assert np.allclose(img[0], bright)
    assert nodes._picture_note(s) == "picture summarised: each pixel averages 1 step(s) x 2 unit(s)"


# ----------------------------------------------------------------------------- a real server

_seeds = itertools.count(9000)


@pytest.mark.comfy
def test_bad_files_in_the_servers_folder_break_nothing_else(comfy_server):
    from test_comfy_apply import _last_stats, _prompt
    from test_preset_filter import _presets

    from comfy_harness import make_tiny
    from comfy_harness.server import PromptExecutionError

    srv = comfy_server
    d = srv.base_dir / "models" / "ecad_schedules"
    bad_dir, good = d / "hostile", d / "hostile-good.json"
    named = write_bad_files(bad_dir) + write_special_files(bad_dir / "special")
    Schedule.full(make_layout("pixart", 2), 4, name="hostile-good").save(good)
    try:
        for _ in range(2):
            info = srv.object_info()
            for n in ("ApplyECADSchedule", "LoadECADSchedule", "PreviewECADSchedule", "EvaluateECADSchedule"):
                assert n in info, f"{n} missing from /object_info:\n{srv.log_text()[-3000:]}"
            opts = _keys(info["ApplyECADSchedule"]["input"]["required"]["preset"][0])
            assert "user/hostile-good" in opts and "pixart-alpha-256-fast" in opts
            assert not any(k.startswith("user/hostile/") for k in opts)
            q = urllib.parse.urlencode({"loader": "UNETLoader", "file": make_tiny.file_name("ecad_tiny_pixart_alpha")})
            assert "user/hostile-good" in _keys(srv.get_json("/ecad/presets?" + q)["options"])
            assert "off" in _presets(srv, "", "")["options"]
        # a workflow with a user schedule runs; one with a shipped preset passes validation and fails
        # only because that preset is for the 28-block PixArt, naming it
        srv.run(_prompt("ecad_tiny_pixart_alpha", "user/hostile-good", next(_seeds), prefix="hostile"), timeout=300)
        assert _last_stats(srv)["name"] == "hostile-good"
        with pytest.raises(PromptExecutionError) as e:
            srv.run(
                _prompt("ecad_tiny_pixart_alpha", "pixart-alpha-256-fast", next(_seeds), prefix="hostile2"), timeout=300
            )
        assert "pixart-alpha-256-fast" in str(e.value) and "28 main blocks" in str(e.value)
        log = srv.log_text()
        for p, msg in named:  # each bad file logged once, with its reason
            lines = [ln for ln in log.splitlines() if "skipping unreadable schedule" in ln and f"{p}:" in ln]
            assert len(lines) == 1 and msg in lines[0], (p, lines)
    finally:
        shutil.rmtree(bad_dir, ignore_errors=True)
        good.unlink(missing_ok=True)


@pytest.mark.comfy
def test_an_edited_schedule_file_is_used_when_the_same_prompt_is_queued_again(comfy_server):
    """IS_CHANGED keys on the file's content: the same prompt after an edit runs the new schedule."""
    from test_comfy_apply import STEPS, _last_stats, _prompt

    srv = comfy_server
    d = srv.base_dir / "models" / "ecad_schedules" / "edited"
    lay = make_layout("pixart", 2)
    mixed = np.zeros((STEPS, lay.n_units), bool)
    mixed[::2] = True

    def stats_count():
        return len(re.findall(r"ECAD \S+: \d+/\d+ unit calls reused", srv.log_text()))

    apply_preset = _prompt("ecad_tiny_pixart_alpha", "user/edited/a", next(_seeds), prefix="edit_a")
    via_load = _prompt("ecad_tiny_pixart_alpha", "off", next(_seeds), prefix="edit_b")
    via_load["21"] = {"class_type": "LoadECADSchedule", "inputs": {"schedule_file": "user/edited/b"}}
    via_load["20"]["inputs"]["schedule"] = ["21", 0]
    try:
        for name, prompt in (("a", apply_preset), ("b", via_load)):
            Schedule.full(lay, STEPS, name=f"{name}-all-recompute").save(d / f"{name}.json")
            srv.run(prompt, timeout=300)
            st = _last_stats(srv)
            assert st["name"] == f"{name}-all-recompute" and st["reused"] == 0
            n = stats_count()
            Schedule(lay, mixed, name=f"{name}-caching").save(d / f"{name}.json")
            srv.run(prompt, timeout=300)  # the very same prompt
            assert stats_count() == n + 1, "the edited schedule did not run (served from ComfyUI's cache)"
            st = _last_stats(srv)
            assert st["name"] == f"{name}-caching" and st["reused"] > 0
            # unchanged file: ComfyUI's cache serves the prompt again, nothing re-runs
            srv.run(prompt, timeout=300)
            assert stats_count() == n + 1
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.comfy
def test_an_edited_schedule_file_is_evaluated_when_the_same_prompt_is_queued_again(comfy_server):
    """Evaluate's IS_CHANGED keys on its preset file's content, like Apply's and Load's."""
    from test_comfy_eval import LAYOUT as lay
    from test_comfy_eval import STEPS, _prompt, _report

    srv = comfy_server
    d = srv.base_dir / "models" / "ecad_schedules" / "edited-eval"
    mixed = np.zeros((STEPS, lay.n_units), bool)
    mixed[::2] = True
    prompt = _prompt(
        {
            "preset": "user/edited-eval/a",
            "metrics": "psnr",
            "prompts": "",
            "warmup": False,
            "seed": next(_seeds),
            "filename_prefix": "ecad_eval/edited",
        },
        vae=False,
    )
    try:
        Schedule.full(lay, STEPS, name="a-all-recompute").save(d / "a.json")
        _, report, first = _report(srv, srv.run(prompt, timeout=300))
        assert report["rows"][1]["label"] == "a-all-recompute" and report["rows"][1]["reuse_fraction"] == 0
        Schedule(lay, mixed, name="a-caching").save(d / "a.json")
        _, report, second = _report(srv, srv.run(prompt, timeout=300))  # the very same prompt
        assert second != first, "the edited schedule was not evaluated (served from ComfyUI's cache)"
        assert report["rows"][1]["label"] == "a-caching" and report["rows"][1]["reuse_fraction"] > 0
        # unchanged file: ComfyUI's cache serves the prompt again, nothing re-runs
        assert _report(srv, srv.run(prompt, timeout=300))[2] == second
    finally:
        shutil.rmtree(d, ignore_errors=True)
