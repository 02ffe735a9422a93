"""Two Apply ECAD Cache Schedule nodes in a chain (real ComfyUI v0.3.75 server): the later one replaces the
earlier one, on every model family, whether each gets its schedule from the preset list or the schedule input;
"off" passes the model through unchanged."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from test_comfy_harness import _read_latent, ksampler_prompt

from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy
_seeds = itertools.count(9000)
STEPS = 4
LAYOUTS = {
    "ecad_tiny_pixart_alpha": make_layout("pixart", 2),
    "ecad_tiny_flux_dev": make_layout("flux", 1, 1),
    "ecad_tiny_sd3": make_layout("sd3", 1, 1),  # one joint block + the last (pre-only) one
}
STATS = re.compile(r"ECAD (\S+): (\d+)/(\d+) unit calls reused.*?over (\d+) steps, (\d+) model calls")


@pytest.fixture(scope="module")
def chain_schedules(comfy_server):
    """Per model: ``a`` and ``b``, two different schedules that both reuse (b's statistics differ from a's)."""
    d = comfy_server.base_dir / "models" / "ecad_schedules"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for model, lay in LAYOUTS.items():
        for tag, p in (("a", 0.3), ("b", 0.7)):
            bits = rng.random((STEPS, lay.n_units)) < p
            Schedule(lay, bits, name=f"chain-{model}-{tag}").save(d / f"chain-{model}-{tag}.json")
    return d


def _apply(p, node, model_from, source, name):
    """Apply node ``node`` fed by ``model_from``; ``source`` "preset" (the dropdown) or "schedule" (Load node)."""
    inputs = {"model": [model_from, 0], "preset": "off", "offload_cache_to_cpu": False}
    if source == "preset":
        inputs["preset"] = name
    elif source == "schedule":
        p[node + "0"] = {"class_type": "LoadECADSchedule", "inputs": {"schedule_file": name}}
        inputs["schedule"] = [node + "0", 0]
    else:
        assert source == "off"
    p[node] = {"class_type": "ApplyECADSchedule", "inputs": inputs}


def _prompt(model, seed, prefix, applies):
    """KSampler on ``model`` through the Apply nodes ``applies`` = [(source, schedule name)] in order."""
    p = ksampler_prompt(model, prefix, seed)
    p["5"]["inputs"].update(steps=STEPS)
    for k in ("7", "8", "9"):  # latents are enough
        p.pop(k)
    prev = "1"
    for n, (source, name) in enumerate(applies):
        node = str(20 + n)
        _apply(p, node, prev, source, name)
        prev = node
    p["5"]["inputs"]["model"] = [prev, 0]
    return p


def _run(srv, prompt):
    """(latent, the ECAD statistics lines this prompt logged)."""
    start = len(srv.log_text())
    entry = srv.run(prompt, timeout=300)
    return _read_latent(srv.output_files(entry, "latents")[0]), STATS.findall(srv.log_text()[start:])


ORDERS = [("preset", "preset"), ("schedule", "preset"), ("preset", "schedule"), ("schedule", "schedule")]


CASES = [("ecad_tiny_pixart_alpha", o) for o in ORDERS] + [
    ("ecad_tiny_flux_dev", ("preset", "schedule")),
    ("ecad_tiny_sd3", ("schedule", "preset")),
]


@pytest.mark.parametrize("model,order", CASES, ids=[f"{m[10:]}-{a}-{b}" for m, (a, b) in CASES])
def test_a_later_apply_replaces_the_earlier_one(comfy_server, chain_schedules, model, order):
    srv = comfy_server
    seed = next(_seeds)
    first, second = order
    a, b = f"user/chain-{model}-a", f"user/chain-{model}-b"
    only_b, stats_b = _run(srv, _prompt(model, seed, f"chain_{model}_b", [(second, b)]))
    assert len(stats_b) == 1 and int(stats_b[0][1]) > 0
    # before the fix the earlier Apply's wrappers stayed: PixArt failed its self-check ("0 of 6 units ran"),
    # FLUX and SD3 logged a second, empty run of the earlier schedule
    chained, stats = _run(srv, _prompt(model, seed, f"chain_{model}_ab", [(first, a), (second, b)]))
    assert _equal(chained, only_b), "the chained result differs from applying only the later schedule"
    # one run logged, the later schedule's, with the same statistics as the later schedule alone
    assert stats == stats_b, (stats, stats_b)
    assert stats[0][0] == f"chain-{model}-b"


@pytest.mark.parametrize("model", ["ecad_tiny_pixart_alpha", "ecad_tiny_flux_dev"])
def test_off_after_an_apply_passes_the_model_through(comfy_server, chain_schedules, model):
    # "off" means: this node changes nothing, so the earlier Apply's schedule still runs
    srv = comfy_server
    seed = next(_seeds)
    only_a, stats_a = _run(srv, _prompt(model, seed, f"off_{model}_a", [("preset", f"user/chain-{model}-a")]))
    chained, stats = _run(
        srv, _prompt(model, seed, f"off_{model}_aoff", [("preset", f"user/chain-{model}-a"), ("off", None)])
    )
    assert _equal(chained, only_a) and stats == stats_a and stats[0][0] == f"chain-{model}-a"


def _equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
