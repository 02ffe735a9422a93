"""Evolve ECAD Schedule in a real ComfyUI v0.3.75 server: hostile or careless inputs (issue 14)."""

from __future__ import annotations

import json

import pytest
from test_comfy_evolve import STEPS, _pixart_evolve_prompt, _report, _search_dir

from comfy_harness.server import PromptExecutionError
from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy


def _planted_pickle(marker) -> bytes:
    """A pickle (protocol 2) that creates ``marker`` when it is loaded: proof that nothing unpickles it."""
    return b"\x80\x02cbuiltins\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR."


def test_old_pickle_checkpoint_is_refused_never_loaded(comfy_server):
    srv = comfy_server
    name = "tiny-legacy-pickle"
    d = _search_dir(srv, name)
    d.mkdir(parents=True)
    marker = srv.base_dir / "pickle-was-loaded"
    (d / "checkpoint.pkl").write_bytes(_planted_pickle(marker))
    # resume is on by default: the node refuses and says how to start over
    with pytest.raises(PromptExecutionError) as e:
        srv.run(_pixart_evolve_prompt(output_name=name, population=2, prefix="legacy0"), timeout=300)
    msg = str(e.value)
    assert "checkpoint.pkl" in msg and "old pickle format" in msg and "start the search over" in msg, msg[:2000]
    assert "turn 'resume' off" in msg, msg[:2000]
    assert not marker.exists() and (d / "checkpoint.pkl").is_file()
    # resume off starts over: the pickle is deleted, never read
    entry = srv.run(_pixart_evolve_prompt(output_name=name, population=2, resume=False, prefix="legacy1"), timeout=600)
    assert "generation 1," in _report(entry) and "resumed" not in _report(entry)
    assert not marker.exists() and not (d / "checkpoint.pkl").exists()
    assert (d / "checkpoint.safetensors").is_file()


def test_output_name_with_a_trailing_newline_is_refused(comfy_server):
    srv = comfy_server
    with pytest.raises(PromptExecutionError) as e:
        srv.run(_pixart_evolve_prompt(output_name="tiny-newline\n", population=2, prefix="nl"), timeout=300)
    assert "output_name 'tiny-newline" in str(e.value) and "use 1-80 letters" in str(e.value), str(e.value)[:2000]
    root = _search_dir(srv, "")
    assert not root.is_dir() or not [p.name for p in root.iterdir() if "\n" in p.name]


def test_largest_first_seed_with_two_seeds_per_prompt_wraps_to_zero(comfy_server):
    srv = comfy_server
    name = "tiny-max-seed"
    entry = srv.run(
        _pixart_evolve_prompt(
            output_name=name, population=2, seeds_per_prompt=2, first_seed=0xFFFFFFFFFFFFFFFF, prefix="maxseed"
        ),
        timeout=600,
    )
    assert "picked:" in _report(entry)
    front = json.loads((_search_dir(srv, name) / "front" / "front.json").read_text())
    assert front["evaluator"]["seeds"] == [2**64 - 1, 0], front["evaluator"]


def test_a_model_with_a_schedule_applied_is_refused(comfy_server):
    """The search's "no cache" reference would run the earlier schedule while candidates replace it."""
    srv = comfy_server
    name = "tiny-already-applied"
    earlier = _search_dir(srv, "evolve-applied-earlier.json")
    Schedule.every_n(make_layout("pixart", 2), STEPS, 2, name="evolve-applied-earlier").save(earlier)
    p = _pixart_evolve_prompt(output_name=name, population=2, generations=1, prefix="applied")
    p["32"] = {
        "class_type": "ApplyECADSchedule",
        "inputs": {"model": ["1", 0], "preset": "user/evolve-applied-earlier", "offload_cache_to_cpu": False},
    }
    p["30"]["inputs"]["model"] = ["32", 0]
    try:
        with pytest.raises(PromptExecutionError) as e:
            srv.run(p, timeout=300)
    finally:
        earlier.unlink()
    msg = str(e.value)
    assert "Evolve ECAD Schedule: the MODEL already has an ECAD schedule applied ('evolve-applied-earlier'" in msg, msg[
        :2000
    ]
    assert "connect the model without it" in msg, msg[:2000]
    assert not _search_dir(srv, name).exists()  # refused before anything is written
