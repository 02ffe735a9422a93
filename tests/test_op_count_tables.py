"""The CPU op-count tables (``bench/results/cpu-op-counts-*.json``) are what ``bench.op_counts`` gives today.

Every such file is picked up (a family's file counts once it exists): it is regenerated with the arguments it
records and compared whole, except where this environment's torch / ComfyUI / diffusers differ from the ones it
was made with (the counts follow the model code): then it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import op_counts
from bench.common import REPO

FILES = sorted((REPO / "bench" / "results").glob("cpu-op-counts-*.json"))
# stock-size parts ComfyUI's detection fixes (Chroma's 5 x 5120 guidance network on 344 vectors per call): each
# call costs seconds on one CPU thread
SLOW_FAMILIES = {"chroma"}


def _env_versions(recorded: dict) -> dict:
    out = {}
    for path in ("comfy", "diffusers"):
        try:
            out.update(op_counts.versions(path))
        except ImportError:
            pass
    return {k: out.get(k) for k in recorded}


def test_the_tables_are_found():
    # the families this session covers; the #18 families add theirs
    names = {f.name for f in FILES}
    assert {"cpu-op-counts-comfy-pixart.json", "cpu-op-counts-comfy-flux.json"} <= names
    assert "cpu-op-counts-comfy-dit_blocks.json" in names


@pytest.mark.comfy
@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_op_count_table_regenerates(path, tmp_path):
    recorded = json.loads(path.read_text())
    assert recorded.get("argv"), f"{path.name} records no argv: regenerate it with python -m bench.op_counts"
    if recorded.get("family") in SLOW_FAMILIES and not os.environ.get("ECAD_SLOW_WORKFLOWS"):
        pytest.skip(f"{path.name}: minutes on a CPU (set ECAD_SLOW_WORKFLOWS=1 to regenerate it here)")
    want = recorded.get("versions") or {}
    have = _env_versions(want)
    if have != want:
        pytest.skip(f"{path.name} was counted with {want}, this environment has {have}")
    out = tmp_path / path.name
    # a subprocess: ComfyUI's imports stay out of this one (its CPU mode, its model registries)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.op_counts", *recorded["argv"], "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(out.read_text()) == recorded, (
        f"{path.name} differs from what `python -m bench.op_counts {' '.join(recorded['argv'])}` counts now: "
        "regenerate it (and the tables quoting it)"
    )


@pytest.mark.comfy
def test_family_models_are_found_by_asking_the_adapters(comfy_dir):
    from bench import bench_comfy, comfy_family

    bench_comfy.import_comfy("cpu")
    adapters, _, _ = bench_comfy.pack_modules()
    assert {"ecad_tiny_pixart_alpha", "ecad_tiny_pixart_sigma"} <= set(comfy_family.tiny_models("pixart", adapters))
    assert comfy_family.tiny_models("flux", adapters)[:2] == ["ecad_tiny_flux_dev", "ecad_tiny_flux_schnell"]
    assert {"pixart", "flux"} <= set(comfy_family.families(adapters))
    with pytest.raises(SystemExit, match=r"no ComfyUI adapter serves family 'nope'; known: .*pixart"):
        op_counts.main(["--family", "nope"])


def test_conditioning_widths_come_from_the_recipes():
    from bench import comfy_family

    specs = comfy_family.make_tiny().SPECS
    assert comfy_family.cond_dims(specs["ecad_tiny_pixart_alpha"]) == (4096, 0)
    assert comfy_family.cond_dims(specs["ecad_tiny_flux_dev"]) == (64, 32)
    assert comfy_family.cond_dims(specs["ecad_tiny_sd3"]) == (64, 64)
    assert comfy_family.cond_dims(specs["ecad_tiny_wan"]) == (4096, 0)
    assert comfy_family.cond_dims({"kwargs": {}, "cond": {"dim": 8, "pooled": 2}}) == (8, 2)
    with pytest.raises(SystemExit, match="names no text-embedding width"):
        comfy_family.cond_dims({"kwargs": {"depth": 2}})
