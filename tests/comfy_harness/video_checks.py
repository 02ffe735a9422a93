"""Server checks the video families' tests (test_comfy_wan.py, test_comfy_hunyuan_video15.py) share.

``prompt(seed, preset=None, prefix=..., offload=False)`` builds the family's tiny text-to-video prompt; ``tag``
names its schedules (``<tag>-e2e-full``, ``<tag>-e2e-mixed``) and output prefixes (``<tag>_ref``, ...).
"""

from __future__ import annotations

import json

import numpy as np

from comfy_harness.family_prompts import (
    apply_evolved,
    eval_json,
    evaluate_node,
    evolve_node,
    run_latent,
    schedule_dir,
    unit_stats,
)


def save_schedules(srv, layout, steps: int, tag: str, rng_seed: int):
    """``<tag>-e2e-full`` and a random ``<tag>-e2e-mixed`` that surely reuses block 0 from step 1 on."""
    from ecad_core import Schedule

    d = schedule_dir(srv)
    Schedule.full(layout, steps, name=f"{tag}-e2e-full").save(d / f"{tag}-e2e-full.json")
    bits = np.random.default_rng(rng_seed).random((steps, layout.n_units)) < 0.5
    bits[1:, :3] = False  # block 0 reused from step 1 on: something is surely reused
    Schedule(layout, bits, name=f"{tag}-e2e-mixed").save(d / f"{tag}-e2e-mixed.json")
    return d


def all_recompute_and_mixed(srv, prompt, tag: str, seed: int, schedules, n_units: int, steps: int, adapter_line: str):
    """All-recompute is the unpatched video bit for bit and reuses nothing; the mixed schedule reuses exactly its
    rows' units (CFG batched: one call per unit and step) and reports its cache on the device. Returns the
    reference and mixed latents and the log of the three runs."""
    from ecad_core import load_schedule

    start = len(srv.log_text())
    ref = run_latent(srv, prompt(seed, prefix=f"{tag}_ref"))
    full = run_latent(srv, prompt(seed, f"user/{tag}-e2e-full", prefix=f"{tag}_full"))
    text = srv.log_text()[start:]
    assert adapter_line in text, text[-2000:]
    (st,) = unit_stats(text, f"{tag}-e2e-full")
    assert st["reused"] == 0 and st["total"] == steps * n_units
    assert (full == ref).all(), "all-recompute schedule changed the video"
    mixed = run_latent(srv, prompt(seed, f"user/{tag}-e2e-mixed", prefix=f"{tag}_mixed"))
    text = srv.log_text()[start:]
    (st,) = unit_stats(text, f"{tag}-e2e-mixed")
    s = load_schedule(schedules / f"{tag}-e2e-mixed.json")
    # CFG: cond and uncond in one batch, one call per unit and step; step 0 computes everything
    assert st["per_step"] == (~s.effective_bits()).sum(axis=1).tolist() and st["reused"] >= 3 * (steps - 1)
    # the cache held every frame's tokens
    assert st["cache_mib"] > 0 and not st["offloaded"]
    return ref, mixed, text


def offload_gives_the_same_video(srv, prompt, tag: str, seed: int) -> None:
    """The mixed schedule with its cache offloaded to the CPU: the same video, the same reuse, the same cache size."""
    start = len(srv.log_text())
    on_device = run_latent(srv, prompt(seed, f"user/{tag}-e2e-mixed", prefix=f"{tag}_dev"))
    offloaded = run_latent(srv, prompt(seed, f"user/{tag}-e2e-mixed", prefix=f"{tag}_off", offload=True))
    assert (offloaded == on_device).all()
    a, b = unit_stats(srv.log_text()[start:], f"{tag}-e2e-mixed", last=2)
    assert not a["offloaded"] and b["offloaded"] == "offloaded to cpu"
    assert a["cache_mib"] == b["cache_mib"] > 0 and a["per_step"] == b["per_step"] and a["reused"] > 0


def evolve_and_evaluate(srv, p: dict, tag: str, steps: int, output_name: str) -> str:
    """Evolve (one generation, MACs of the loaded model) on prompt ``p`` with its pick applied, then Evaluate
    ``<tag>-e2e-mixed`` against no cache on latents. Returns Evolve's report."""
    p["30"] = evolve_node(steps, output_name, first_seed=3, population=6, resume=True)
    apply_evolved(p, "30")
    entry = srv.run(p, timeout=600)
    report = "\n".join(entry["outputs"]["30"]["text"])
    assert "generation 1" in report, report
    front = json.loads((srv.base_dir / "models" / "ecad_schedules" / output_name / "front" / "front.json").read_text())
    assert front["cost"]["source"] == "macs", front["cost"]  # the cost model of the loaded module
    q = {k: v for k, v in p.items() if k in ("1", "2")}
    q["10"] = evaluate_node(f"user/{tag}-e2e-mixed", steps, f"ecad_eval/{tag}", metrics="psnr, ssim")
    rep = eval_json(srv, srv.run(q, timeout=600))
    row = rep["rows"][1]
    assert row["label"] == f"{tag}-e2e-mixed" and rep["outputs"] == "latent"
    assert 0 < row["reuse_fraction"] < 1 and row["cost_model"] == "macs" and row["compute_fraction"] < 1
    assert row["metrics"]["latent_rel_mse"] > 0
    return report
