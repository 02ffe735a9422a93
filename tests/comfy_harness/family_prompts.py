"""API prompts and log parsing shared by the per-family server tests (test_comfy_wan.py, _lumina2.py, _sd3.py, ...).

One home for: the tiny text-to-image/video prompt (UNETLoader -> TestRandomConditioning x2 -> empty latent ->
KSampler -> SaveLatent, optionally ApplyECADSchedule in front of the sampler), reading a SaveLatent file, the
"ECAD <name>: n/m unit calls reused" statistics of the server log, the schedule folder, and the Evolve / Evaluate
node skeletons. Nothing here imports ComfyUI: it runs in the server's child process.
"""

from __future__ import annotations

import re
from pathlib import Path

from comfy_harness import make_tiny  # stdlib only

STATS = re.compile(r"ECAD (\S+): (\d+)/(\d+) unit calls reused[^\n]*")
_LAST = re.compile(r"ECAD (\S+): (\d+)/(\d+) unit calls reused.*?over (\d+) steps, (\d+) model calls(.*)")


def read_latent(path):
    """The tensor of a SaveLatent file."""
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"]


def run_latent(srv, prompt: dict, timeout: float = 300):
    """Run ``prompt`` and read its (first) SaveLatent output."""
    return read_latent(srv.output_files(srv.run(prompt, timeout=timeout), "latents")[0])


def sampler_prompt(
    model: str,
    seed: int,
    *,
    dim: int,
    pooled_dim: int = 0,
    latent: str,
    latent_inputs: dict,
    steps: int,
    cfg: float = 2.0,
    scheduler: str = "simple",
    prefix: str,
) -> dict:
    """Tiny model -> random conditioning (positive: ``seed``, negative: zeros) -> empty latent -> KSampler (euler)
    -> SaveLatent under ``latents/<prefix>``. Nodes "1".."6"."""
    cond = {"tokens": 8, "dim": dim, "pooled_dim": pooled_dim}
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": make_tiny.file_name(model), "weight_dtype": "default"},
        },
        "2": {"class_type": "TestRandomConditioning", "inputs": {**cond, "seed": seed, "zero": False}},
        "3": {"class_type": "TestRandomConditioning", "inputs": {**cond, "seed": 0, "zero": True}},
        "4": {"class_type": latent, "inputs": dict(latent_inputs)},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/{prefix}"}},
    }


def apply_schedule(p: dict, preset: str | None, offload: bool = False, node: str = "20", **inputs) -> dict:
    """Put ApplyECADSchedule (node ``node``) between the loader "1" and the KSampler "5"; ``preset`` None: none."""
    if preset is not None:
        p[node] = {
            "class_type": "ApplyECADSchedule",
            "inputs": {"model": ["1", 0], "preset": preset, "offload_cache_to_cpu": offload, **inputs},
        }
        p["5"]["inputs"]["model"] = [node, 0]
    return p


def apply_evolved(p: dict, evolve: str, node: str = "20") -> dict:
    """Apply the schedule Evolve node ``evolve`` picked (preset off) to the KSampler "5"."""
    return apply_schedule(p, "off", node=node, schedule=[evolve, 0])


def without_sampler(p: dict) -> dict:
    """``p`` less its latent, KSampler and SaveLatent ("4".."6"): an output node (Evolve, Evaluate) runs alone."""
    for k in ("4", "5", "6"):
        p.pop(k)
    return p


def schedule_dir(srv) -> Path:
    """The server's models/ecad_schedules (``user/<name>`` presets), created."""
    d = srv.base_dir / "models" / "ecad_schedules"
    d.mkdir(parents=True, exist_ok=True)
    return d


def unit_stats(text: str, name: str, last: int = 1) -> list[dict]:
    """The statistics of the last ``last`` runs of schedule ``name`` in the log ``text``: reused, total, cache_mib,
    offloaded, per_step."""
    found = [m for m in STATS.finditer(text) if m.group(1) == name][-last:]
    assert len(found) == last, text[-3000:]
    out = []
    for m in found:
        line = m.group(0)
        cache = re.search(r"; cache ([\d.]+) MiB( offloaded to \w+)?", line)
        out.append(
            {
                "reused": int(m.group(2)),
                "total": int(m.group(3)),
                "cache_mib": float(cache.group(1)) if cache else 0.0,
                "offloaded": (cache.group(2) or "").strip() if cache else "",
                "per_step": [int(n) for n in re.search(r"reused per step ([\d,]+)", line).group(1).split(",")],
            }
        )
    return out


def last_stats(srv) -> dict:
    """The statistics of the server's last schedule run: name, reused, total, steps, calls, rest (of the line)."""
    lines = _LAST.findall(srv.log_text())
    assert lines, "no ECAD statistics in the server log"
    name, reused, total, steps, calls, rest = lines[-1]
    return {
        "name": name,
        "reused": int(reused),
        "total": int(total),
        "steps": int(steps),
        "calls": int(calls),
        "rest": rest,
    }


def sampling_inputs(steps: int, cfg: float = 2.0, size: int = 64, prompts: str = "") -> dict:
    """The sampling settings Evolve and Evaluate share (euler, simple, square ``size``)."""
    return {
        "steps": steps,
        "cfg": cfg,
        "sampler_name": "euler",
        "scheduler": "simple",
        "width": size,
        "height": size,
        "prompts": prompts,
    }


def evolve_node(
    steps: int,
    output_name: str,
    *,
    first_seed: int,
    population: int,
    resume: bool,
    cfg: float = 2.0,
    model: str = "1",
    **kw,
) -> dict:
    """EvolveECADSchedule on ``model`` with the conditioning "2"/"3": one generation, latent quality, MACs,
    target 1.2x; ``kw`` adds or overrides inputs."""
    return {
        "class_type": "EvolveECADSchedule",
        "inputs": {
            "model": [model, 0],
            "positive": ["2", 0],
            "negative": ["3", 0],
            **sampling_inputs(steps, cfg),
            "seeds_per_prompt": 1,
            "first_seed": first_seed,
            "population": population,
            "generations": 1,
            "time_budget_minutes": 0.0,
            "quality_metric": "latent",
            "compute_objective": "macs",
            "target_speedup": 1.2,
            "output_name": output_name,
            "search_seed": 0,
            "resume": resume,
            **kw,
        },
    }


def evaluate_node(preset: str, steps: int, filename_prefix: str, *, metrics: str, cfg: float = 2.0, **kw) -> dict:
    """EvaluateECADSchedule of ``preset`` against no cache on model "1", positive "2", seed 40, one seed, one grid
    row, no warm-up; ``kw`` adds or overrides inputs."""
    return {
        "class_type": "EvaluateECADSchedule",
        "inputs": {
            "model": ["1", 0],
            "positive": ["2", 0],
            "preset": preset,
            **sampling_inputs(steps, cfg),
            "seed": 40,
            "seeds_per_prompt": 1,
            "metrics": metrics,
            "grid_rows": 1,
            "filename_prefix": filename_prefix,
            "warmup": False,
            **kw,
        },
    }


def eval_json(srv, entry) -> dict:
    """The _eval.json written beside Evaluate's grid image."""
    import json

    grid = srv.output_files(entry, "images")[0]
    return json.loads(grid.with_name(grid.name.replace("_grid.png", "_eval.json")).read_text())
