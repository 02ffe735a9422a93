"""The unit probe on ComfyUI's FLUX-class models, in-process: the units ComfyUI's blocks compute inside their own
forward (the double blocks' attention, the single blocks' parts) are stored by the adapters, not run through the
engine's unit calls; the probe must see every one of them, on the re-statement and on the module-level fallback,
and the probe's run must give the uncached output bit for bit."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from test_comfy_flux_class import STEPS, _den
from test_comfy_upstream_changes import _pack_loop, _switch_off

from bench import bench_comfy

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    bench_comfy.import_comfy("cpu")
    return bench_comfy.pack_modules()


@pytest.fixture(autouse=True)
def _fresh_checks(comfy):
    importlib.import_module("comfyui_ecad_bench.ecad_core.hooks").forget_verified()


@pytest.mark.parametrize("path", ["restated", "module fallback"])
@pytest.mark.parametrize("kind", ["flux1", "flux2", "chroma"])
def test_probe_sees_every_unit_of_comfyuis_flux_blocks(comfy, kind, path, monkeypatch):
    if path == "module fallback":
        _switch_off(monkeypatch, comfy)
    probe_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.engine.probe")
    engine_mod = importlib.import_module("comfyui_ecad_bench.ecad_core.engine")
    d = _den(kind)
    plain = d.loop()
    layout = comfy[0].adapter_of(d.model).layout
    probe = probe_mod.UnitChangeProbe(layout.n_units, STEPS, max_coords=10**9)
    with engine_mod.unit_timing(probe):
        out, stats, _ = _pack_loop(comfy, d, comfy[2].Schedule.full(layout, STEPS))
    assert torch.equal(out, plain) and stats.total_reused == 0
    assert probe.units_seen() == list(range(layout.n_units)), (kind, path)
    E = probe.changes()
    low = np.tril_indices(STEPS, -1)
    assert all((E[u][low] > 0).all() for u in range(layout.n_units)), (kind, path)
    # without the probe, all recompute keeps nothing (the probe's keeping is its own run's)
    _, stats, run = _pack_loop(comfy, d, comfy[2].Schedule.full(layout, STEPS))
    assert run.engine.cache_bytes() == 0
