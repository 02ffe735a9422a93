"""What a second Apply ECAD node leaves on its clone, with ComfyUI's own ModelPatcher in-process (the sampled
results are pinned on a real server in test_comfy_chain.py): nothing of the earlier Apply, everything of other
nodes, and the earlier clone untouched."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from bench import bench_comfy

UNITS = ("attn", "cross_attn", "mlp")


@pytest.fixture(scope="module")
def pack(comfy_dir):
    bench_comfy.import_comfy("cpu")
    bench_comfy.pack_modules()
    return {
        m: importlib.import_module(f"comfyui_ecad_bench.{m}")
        for m in ("nodes.patching", "nodes.adapters", "ecad_core.schedule", "ecad_core.engine.cuda_graphs")
    }


def _patcher(dm):
    import comfy.model_patcher

    base = torch.nn.Module()
    base.diffusion_model = dm
    return comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))


def _schedules(pack, mp):
    lay = pack["nodes.adapters"].adapter_for(mp).layout
    make = pack["ecad_core.schedule"].Schedule
    return [make(lay, np.random.default_rng(i).random((3, lay.n_units)) < 0.5, name=n) for i, n in enumerate("ab")]


def _run(mp):
    return mp.model_options["transformer_options"].get("ecad")


def _ours(pack, patches: dict) -> dict:
    return {k: v for k, v in patches.items() if pack["nodes.adapters"].is_ecad_patch(v)}


def _wrapper_runs(mp):
    return {kind: [w.__self__ for w in mp.get_wrappers(kind, "ecad")] for kind in ("outer_sample", "apply_model")}


@pytest.fixture(scope="module")
def pixart(pack):
    return bench_comfy.comfy_pixart("alpha", 384, tiny=True, device="cpu", dtype=torch.float32, steps=3).model


def test_a_later_pixart_apply_replaces_every_patch_of_the_earlier_one_and_keeps_other_nodes(pack, pixart):
    patch_model = pack["nodes.patching"].patch_model
    base = _patcher(pixart)

    def foreign0(*a, **k):  # another node's patch of block 0, before both Applies
        return type(pixart.blocks[0]).forward(pixart.blocks[0], *a, **k)

    def foreign1(*a, **k):  # and of block 1, between them
        return type(pixart.blocks[1]).forward(pixart.blocks[1], *a, **k)

    base.add_object_patch("diffusion_model.blocks.0.forward", foreign0)
    a, b = _schedules(pack, base)
    m1 = patch_model(base, a)
    mid = m1.clone()
    mid.add_object_patch("diffusion_model.blocks.1.forward", foreign1)
    m2 = patch_model(mid, b)

    run_a, run_b = _run(m1), _run(m2)
    assert run_a.label == "a" and run_b.label == "b"
    # only the later run's wrappers run (the earlier run's self-check failed on an engine nothing called)
    assert _wrapper_runs(m2) == {"outer_sample": [run_b], "apply_model": [run_b]}
    assert _wrapper_runs(m1) == {"outer_sample": [run_a], "apply_model": [run_a]}  # the earlier clone is intact
    # other nodes' block forwards stay, and those blocks are cached at their modules; the others re-stated (their
    # modules carry the fallback's patches, dormant while the re-statement runs: issue #16)
    assert m2.object_patches["diffusion_model.blocks.0.forward"] is foreign0
    assert m2.object_patches["diffusion_model.blocks.1.forward"] is foreign1
    n = len(pixart.blocks)
    expected = {f"diffusion_model.blocks.{i}.{u}.forward" for i in range(n) for u in UNITS} | {
        f"diffusion_model.blocks.{i}.forward" for i in range(2, n)
    }
    ours1, ours2 = _ours(pack, m1.object_patches), _ours(pack, m2.object_patches)
    assert set(ours2) == expected
    assert not {id(f) for f in ours1.values()} & {id(f) for f in ours2.values()}, "an earlier Apply's patch survived"


def test_a_clone_of_a_patched_model_shares_its_run(pack, pixart):
    # ModelPatcher.clone deep-copies model_options: the run there must stay the one the wrappers drive
    m1 = pack["nodes.patching"].patch_model(_patcher(pixart), _schedules(pack, _patcher(pixart))[0])
    clone = m1.clone()
    assert _run(clone) is _run(m1) and _wrapper_runs(clone)["outer_sample"] == [_run(m1)]


def test_an_earlier_applys_cuda_graph_forward_is_removed_but_another_nodes_is_kept(pack, pixart):
    patch_model = pack["nodes.patching"].patch_model
    GraphMode = pack["ecad_core.engine.cuda_graphs"].GraphMode
    a, b = _schedules(pack, _patcher(pixart))
    m1 = patch_model(_patcher(pixart), a)
    gm = GraphMode(pixart, _run(m1).engine, original=pixart.forward, key_kwargs=("context",), defer_checks=True)
    m1.add_object_patch("diffusion_model.forward", gm.forward)  # as comfy_graphs.install_graphs does on a GPU
    assert "diffusion_model.forward" not in patch_model(m1, b).object_patches

    def foreign(*a, **k):
        return type(pixart).forward(pixart, *a, **k)

    base = _patcher(pixart)
    base.add_object_patch("diffusion_model.forward", foreign)
    assert patch_model(patch_model(base, a), b).object_patches["diffusion_model.forward"] is foreign


def test_a_later_flux_apply_replaces_the_earlier_ones_block_and_module_patches(pack):
    dm = bench_comfy.comfy_flux(256, tiny=True, device="cpu", dtype=torch.float32, steps=3).model
    patch_model = pack["nodes.patching"].patch_model
    base = _patcher(dm)
    a, b = _schedules(pack, base)
    m1 = patch_model(base, a)
    m2 = patch_model(m1, b)
    assert _wrapper_runs(m2) == {"outer_sample": [_run(m2)], "apply_model": [_run(m2)]} and _run(m2).label == "b"
    dit1 = m1.model_options["transformer_options"]["patches_replace"]["dit"]
    dit2 = m2.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit2) == set(dit1) and len(dit2) == len(dm.double_blocks) + len(dm.single_blocks)
    assert all(dit2[k] is not dit1[k] for k in dit1)
    ours1, ours2 = _ours(pack, m1.object_patches), _ours(pack, m2.object_patches)
    assert set(ours2) == set(ours1) and all(ours2[k] is not ours1[k] for k in ours1)
