"""``python -m ecad_core eval`` end to end on the built-in tiny PixArt-α, metric models from local files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from support.eval_metric_weights import cached_inception, write_lpips

from ecad_core import Schedule, make_layout
from ecad_core.cli import main

STEPS = 4
LAYOUT = make_layout("pixart", 4)  # tiny:pixart-alpha has 4 blocks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval-cli")
    bits = np.random.default_rng(1).random((STEPS, LAYOUT.n_units)) < 0.5
    Schedule(LAYOUT, bits, name="mixed").save(d / "mixed.json")
    Schedule.full(LAYOUT, STEPS, name="full").save(d / "full.json")
    (d / "prompts.txt").write_text("a red fox in the snow\n", encoding="utf-8")
    ref = d / "reference"
    ref.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):  # reference images of another size: FID resizes each one on its own
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(ref / f"{i}.png")
    return {"dir": d, "lpips": write_lpips(d / "lpips"), "inception": cached_inception(), "reference": ref}


def _eval(files, *extra):
    d = files["dir"]
    return main(
        [
            "eval",
            "--model",
            "tiny:pixart-alpha",
            "--prompts",
            str(d / "prompts.txt"),
            "--seeds",
            "0",
            "1",
            "--height",
            "64",
            "--width",
            "64",
            "--quiet",
            *extra,
        ]
    )


def test_eval_end_to_end_on_tiny_pixart(files, capsys):
    d = files["dir"]
    out = d / "out"
    rc = _eval(
        files,
        "--schedule",
        str(d / "full.json"),
        "--schedule",
        str(d / "mixed.json"),
        "--metrics",
        "psnr,ssim,lpips,clip,fid",
        "--lpips-weights",
        str(files["lpips"]),
        "--inception-weights",
        str(files["inception"]),
        "--fid-reference",
        str(files["reference"]),
        "--grid-rows",
        "2",
        "--save-images",
        "--no-warmup",
        "--out",
        str(out),
    )
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["columns"] == ["psnr", "ssim", "lpips", "clip", "fid", "fid_ref"]
    assert set(report["skipped"]) == {"clip"} and "CLIP" in report["skipped"]["clip"]
    nocache, full, mixed = report["rows"]
    assert [r["label"] for r in report["rows"]] == ["no cache", "full", "mixed"]
    # all-recompute: the same images as no cache (same seeds), so PSNR inf, SSIM 1, LPIPS 0, FID 0
    assert full["metrics"]["psnr"] == "inf" and full["metrics"]["ssim"] == pytest.approx(1.0)
    assert full["metrics"]["lpips"] == pytest.approx(0.0, abs=1e-12)
    assert full["metrics"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert full["reuse_fraction"] == 0 and full["compute_fraction"] == pytest.approx(1.0)
    assert full["metrics"]["fid_ref"] == pytest.approx(nocache["metrics"]["fid_ref"], rel=1e-6)
    # the mixed schedule reuses units and costs fewer MACs (analytic model of the tiny transformer)
    m = mixed["metrics"]
    assert 0 < mixed["reuse_fraction"] < 1 and mixed["cost_model"] == "macs"
    assert mixed["tmacs"] < nocache["tmacs"] and mixed["expected_speedup"] > 1
    assert isinstance(m["psnr"], float) and math.isfinite(m["psnr"]) and 0 < m["ssim"] <= 1 and m["lpips"] > 0
    assert m["fid"] >= 0 and m["fid_ref"] > 0 and m["clip"] == "n/a"
    assert all(r["seconds_per_image"] > 0 for r in report["rows"])
    # the same table three ways
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert [r["label"] for r in rows] == ["no cache", "full", "mixed"] and rows[1]["psnr"] == "inf"
    md = (out / "eval.md").read_text()
    assert md in printed and "| mixed |" in md and "clip skipped:" in md and "∞" in md
    with Image.open(out / "grid.png") as im:  # no cache | full | diff | mixed | diff, 2 rows
        assert im.size == (5 * 64 + 4 * 2, 14 + 2 * 64 + 2)
    assert len(list((out / "images").rglob("*.png"))) == 3 * 2


def test_eval_bad_input_is_one_clear_line(files, capsys):
    d = files["dir"]
    assert _eval(files, "--schedule", str(d / "nope.json"), "--out", str(d / "x")) == 2
    assert "not a shipped preset" in capsys.readouterr().err
    assert _eval(files, "--schedule", str(d / "mixed.json"), "--prompts-set", "parti", "--out", str(d / "x")) == 2
    assert "exactly one of --prompts" in capsys.readouterr().err
    assert _eval(files, "--schedule", str(d / "mixed.json"), "--metrics", "psnr,fidd", "--out", str(d / "x")) == 2
    assert "'fidd'" in capsys.readouterr().err
    # a shipped preset of another architecture does not fit the tiny model: refused before sampling
    assert _eval(files, "--schedule", "pixart-alpha-256-fast", "--metrics", "psnr", "--out", str(d / "x")) == 2
    assert "pixart-alpha-256-fast" in capsys.readouterr().err


def test_eval_seeds_out_of_range_are_refused_before_loading(files, capsys):
    d = files["dir"]
    for seed in (2**64, -1):
        out = d / f"seed-{seed}"
        args = ("--schedule", str(d / "mixed.json"), "--metrics", "psnr", "--seeds", "0", str(seed), "--out", str(out))
        assert _eval(files, *args) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: --seeds: {seed} is out of range; a seed is an integer in 0..{2**64 - 1}", err
        assert not out.exists()
