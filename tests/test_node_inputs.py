"""The Evolve and Evaluate nodes take their inputs as one dataclass each: its fields must be exactly the inputs the
node declares (the names saved workflows hold), with the same defaults for the optional ones."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from bench import bench_comfy


@pytest.fixture(scope="module")
def node_modules(comfy_dir):
    bench_comfy.import_comfy("cpu")
    bench_comfy.pack_modules()
    return {m: importlib.import_module(f"comfyui_ecad_bench.nodes.{m}") for m in ("evolve_node", "evaluate_node")}


@pytest.mark.parametrize(
    "module,node,inputs",
    [
        ("evolve_node", "EvolveECADSchedule", "EvolveInputs"),
        ("evaluate_node", "EvaluateECADSchedule", "EvaluateInputs"),
    ],
)
def test_node_input_dataclass_matches_the_declared_inputs(node_modules, module, node, inputs):
    mod = node_modules[module]
    declared = getattr(mod, node).INPUT_TYPES()
    fields = {f.name: f for f in dataclasses.fields(getattr(mod, inputs))}
    assert sorted(fields) == sorted([*declared["required"], *declared["optional"]])
    for name in declared["required"]:
        assert fields[name].default is dataclasses.MISSING, name  # ComfyUI always passes them
    for name, (_, *opts) in declared["optional"].items():
        want = opts[0].get("default") if opts and "default" in opts[0] else None
        assert fields[name].default == want, name
