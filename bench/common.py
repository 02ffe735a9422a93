"""Timing, memory and result-file helpers shared by the benches."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCHEDULES = REPO / "schedules"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> tuple[float, object]:
    """Wall time of ``fn()`` in ms, the device drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3, out


def peak_bytes(fn, device) -> tuple[int, object]:
    """Peak device memory above what was allocated before ``fn()`` (CUDA only; 0 elsewhere)."""
    if torch.device(device).type != "cuda":
        return 0, fn()
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    sync(device)
    return torch.cuda.max_memory_allocated() - base, out


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs) -> float:
    """(max - min) / median of the rounds, in %: how much identical rounds disagreed."""
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return 100.0 * (max(xs) - min(xs)) / m if m else 0.0


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        same_nonfinite = bool(torch.equal(torch.isfinite(a), torch.isfinite(b)))
        fin = torch.isfinite(a) & torch.isfinite(b)
        d = (a[fin] - b[fin]).abs().max().item() if fin.any() else 0.0
        return d if same_nonfinite else float("inf")
    return (a - b).abs().max().item()


def hardware(device) -> dict:
    d = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    d.update(gpu=None, driver=None, cuda=None)  # every result names them, None off a GPU
    if torch.device(device).type == "cuda":
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
        d["driver"] = gpu_driver()
    try:
        import diffusers

        d["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    d["comfyui"] = comfy_version()
    return d


def gpu_driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi), None where it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def comfy_version() -> str | None:
    """The version of the ComfyUI tree the benches import (ECAD_COMFY_DIR, else .cache/ComfyUI), read without
    importing it; None where there is none."""
    import re

    p = Path(os.environ.get("ECAD_COMFY_DIR") or REPO / ".cache" / "ComfyUI") / "comfyui_version.py"
    m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", p.read_text()) if p.is_file() else None
    return m.group(1) if m else None


def write_json(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def resolve_dtype(name: str, device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def replay_bits(sched, steps: int):
    """The bits a cache replays for ``sched`` over ``steps`` steps: remapped as the engine remaps them."""
    from ecad_core.schedule import remap_steps

    return (sched if sched.steps == steps else remap_steps(sched, steps)).effective_bits()
