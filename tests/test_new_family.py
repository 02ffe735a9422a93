"""A new model family takes three files: its record (``ecad_core/families``), its diffusers adapter
(``ecad_core/diffusers/adapters``) and its ComfyUI adapter (``nodes/adapters``). The toy family of
``tests/support/toy_family`` is those three files and nothing else; dropped into the packages the registries search
(their ``__path__``, as pkgutil finds plug-ins), every part of the pack picks it up: layouts and schedule files,
ECAD's format (which refuses it), the cost model, model-file detection, the search's seeds, ``apply`` on diffusers,
the library's labels, the preview, and the Apply node's adapter lookup and patching on ComfyUI's ModelPatcher."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support.toy_family.model import ToyTransformer

TOY = Path(__file__).resolve().parent / "support" / "toy_family"
PLUGINS = {"families": "ecad_core.families", "diffusers": "ecad_core.diffusers.adapters", "comfy": "nodes.adapters"}


@contextlib.contextmanager
def plugged(package: str, folder: Path):
    """``folder``'s modules become modules of ``package`` (its registry discovers them) until the end."""
    pkg = importlib.import_module(package)
    pkg.__path__.append(str(folder))
    pkg.refresh()
    try:
        yield pkg
    finally:
        pkg.__path__.remove(str(folder))
        sys.modules.pop(f"{package}.toy", None)
        pkg.refresh()


def test_the_toy_family_is_three_files():
    # if the toy family needed a fourth file (or an edit elsewhere), this test file would have to change
    files = sorted(p.relative_to(TOY).as_posix() for p in TOY.rglob("*.py") if p.parent != TOY)
    assert files == ["comfy/toy.py", "diffusers/toy.py", "families/toy.py"]


@pytest.fixture
def toy_backend():
    with plugged("ecad_core.families", TOY / "families"), plugged("ecad_core.diffusers.adapters", TOY / "diffusers"):
        yield


def test_backend_picks_up_a_new_family(toy_backend, tmp_path):
    from ecad_core import Schedule, apply, costs, families, load_schedule, make_layout
    from ecad_core.schedule import layout_from_json, to_ecad_dict
    from ecad_core.schedule.model_files import layout_of_file, layout_of_keys
    from ecad_core.search.problem import GenomeSpace
    from ecad_core.search.sampling import heuristic_seeds

    # layout, schedule files
    lay = make_layout("toy", 3)
    assert lay.units()[:2] == [("0", "mix"), ("0", "mlp")] and lay.block_counts() == {"blocks": 3}
    assert layout_from_json("toy", lay.to_json()) == lay
    s = Schedule(lay, np.array([[1] * 6, [0, 1, 1, 0, 1, 1], [0, 1, 0, 1, 0, 1]], bool), name="t", model="toy-small")
    s.save(tmp_path / "t.json")
    assert load_schedule(tmp_path / "t.json") == s
    # ECAD's reference format covers PixArt and FLUX only
    with pytest.raises(ValueError, match="ECAD's format only covers PixArt and FLUX schedules, not 'toy'"):
        to_ecad_dict(s)
    # names and labels
    assert families.family_of_model("toy-small") == "toy" and families.model_label("toy-small", "toy") == "Toy-S"
    # cost model: the variant, the family default, a custom architecture, a diffusers config
    assert "toy-small" in costs.ARCHS and costs.FAMILY_DEFAULT["toy"] == "toy-small"
    c = costs.step_costs("toy-small", 16, 16, batch=1)  # 2x2 latent pixels, patch 1: 4 tokens
    assert c.unit.tolist() == [4 * 64, 2 * 4 * 8 * 16] * 3 and c.fixed_parts == {"toy_embed": 4 * 8 * 8}
    assert costs.arch_for_schedule(s).name == "toy-small"
    assert costs.Arch.custom("toy", depth=5).layout() == make_layout("toy", 5)
    tr = ToyTransformer()
    assert costs.Arch.from_diffusers_config(tr.config).layout() == lay
    # model-file detection, from the tensor names of a safetensors header
    assert layout_of_keys(["model.diffusion_model." + k for k in tr.state_dict()]) == (lay, "toy")
    save_file(tr.state_dict(), tmp_path / "toy.safetensors")
    assert layout_of_file(tmp_path / "toy.safetensors") == (lay, "toy")
    # the search's seeds use its attention components (one here: no attention-together seed)
    names = [x.name for x in heuristic_seeds(GenomeSpace(lay, 6))]
    assert "no-cache" in names and not any(n.startswith("cache-attention-every") for n in names)
    # diffusers: the adapter's units, hooked at their modules; all-recompute is exact, a schedule reuses
    torch.manual_seed(0)
    xs = torch.randn(3, 2, 4, 8)  # one input per step

    def sample():
        return [tr(hidden_states=x, timestep=torch.tensor(t)) for x, t in zip(xs, (3.0, 2.0, 1.0))]

    with torch.no_grad():
        ref = sample()
        with apply(tr, Schedule.full(lay, 3)):
            assert all(torch.equal(a, b) for a, b in zip(ref, sample()))
        with apply(tr, s) as h:
            outs = sample()
            stats = h.finish_run()
    assert torch.equal(outs[0], ref[0]) and not torch.equal(outs[2], ref[2])
    assert stats.total_reused == int((~s.effective_bits()).sum()) == 5
    assert all("forward" not in m.__dict__ for m in tr.modules())  # removed cleanly


def test_without_the_toy_files_nothing_knows_the_family():
    # the three files are what makes the family: the packages' own modules do not know it
    from ecad_core import costs, families, make_layout
    from ecad_core.diffusers.adapters import find_diffusers_units

    assert families.find("toy") is None and "toy-small" not in costs.ARCHS
    with pytest.raises(ValueError, match="unknown model family 'toy'"):
        make_layout("toy", 3)
    with pytest.raises(Exception, match="no diffusers adapter for ToyTransformer"):
        find_diffusers_units(ToyTransformer())


@pytest.fixture
def toy_pack(comfy_dir):
    """This pack as ComfyUI loads it (bench.bench_comfy's in-process package), with the toy family's record and
    ComfyUI adapter dropped into its packages."""
    from bench import bench_comfy

    bench_comfy.import_comfy("cpu")
    adapters, _, _ = bench_comfy.pack_modules()
    with (
        plugged("comfyui_ecad_bench.ecad_core.families", TOY / "families"),
        plugged("comfyui_ecad_bench.nodes.adapters", TOY / "comfy"),
    ):
        yield {
            "adapters": adapters,
            **{m: importlib.import_module(f"comfyui_ecad_bench.nodes.{m}") for m in ("patching", "library")},
            "preview": importlib.import_module("comfyui_ecad_bench.nodes.preview_node"),
            "schedule": importlib.import_module("comfyui_ecad_bench.ecad_core.schedule"),
        }


def test_comfyui_nodes_pick_up_a_new_family(toy_pack):
    import comfy.model_patcher

    Schedule, make_layout = toy_pack["schedule"].Schedule, toy_pack["schedule"].make_layout
    lay = make_layout("toy", 3)
    s = Schedule(lay, np.array([[1] * 6, [0, 1, 1, 0, 1, 1], [0, 1, 0, 1, 0, 1]], bool), name="t", model="toy-small")
    s.metrics["expected_speedup"] = 1.5
    # the library's dropdown label and the Load node's info name the variant
    lib = toy_pack["library"]
    assert lib.label("user/t", s) == "user/t · Toy-S · 1.50×"
    assert lib.info_text(s).splitlines()[0] == "t (Toy-S)"
    # the preview draws the family's colours
    img = toy_pack["preview"].schedule_image(s)[0].numpy()
    assert np.array_equal(img[0, 0], np.float32([1.0, 0.0, 0.0])) and np.array_equal(img[0, 4], np.float32([0, 0, 1]))
    # Apply: the adapter lookup finds the toy adapter (its class declared by dotted path), the patch caches
    # every unit at its module through ComfyUI's own ModelPatcher
    torch.manual_seed(0)
    dm = ToyTransformer().eval()
    base = torch.nn.Module()
    base.diffusion_model = dm
    mp = comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))
    ad = toy_pack["adapters"].adapter_for(mp)
    assert type(ad).__name__ == "ToyComfy" and ad.layout == lay and ad.kind == "ComfyUI ToyTransformer"
    cost = ad.compute_cost(3, 16, 16, 1)
    assert cost.source == "macs" and cost.info["arch"] == "toy-small"
    xs = torch.randn(3, 2, 4, 8)  # one input per step
    with torch.no_grad():
        ref = [dm(x) for x in xs]
    m = toy_pack["patching"].patch_model(mp, s)
    run = m.model_options["transformer_options"]["ecad"]
    m.patch_model()
    try:
        run.engine.begin_run(3)
        with torch.no_grad():
            outs = []
            for step, x in enumerate(xs):
                run.engine.set_position(step, ("cond",))
                outs.append(dm(x))
        stats = run.engine.end_run()
    finally:
        m.unpatch_model()
    assert torch.equal(outs[0], ref[0]) and not torch.equal(outs[2], ref[2])
    assert stats.total_reused == 5 and stats.total_computed == 13
    assert json.dumps(cost.describe())  # JSON-friendly, as the search saves it


def test_a_broken_plugin_module_costs_only_itself(tmp_path, caplog):
    # a family module that fails to import is logged once with its name and skipped; the others still register
    from ecad_core import families

    shipped = families.names()
    assert {"dit_blocks", "flux", "pixart"} <= set(shipped)
    (tmp_path / "broken.py").write_text("raise RuntimeError('half-written family')\n")
    with caplog.at_level("ERROR", logger="ecad"), plugged("ecad_core.families", tmp_path):
        names = families.names()
    assert names == shipped
    assert "cannot load ecad_core.families.broken (RuntimeError: half-written family); skipped" in caplog.text
