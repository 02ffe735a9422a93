"""Demo: the paper's PixArt-α presets on a built-in small random-weight PixArt-α.

The model has PixArt-α's 28-block structure (so the shipped schedules fit) with
a small width so it runs on a CPU. It prints, per preset, the measured
denoising time against no cache, the speedup the cost model expects for this
model, and the engine's skip statistics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SCHEDULES = Path(__file__).resolve().parents[2] / "schedules"
PRESETS = ("pixart-alpha-256-fast", "pixart-alpha-256-faster", "pixart-alpha-256-fastest")
PROMPTS = ["a lighthouse on a cliff at dusk", "a bowl of ramen, studio photo"]


def _generate(pipe, steps):
    import torch

    out = pipe(
        prompt=PROMPTS,
        num_inference_steps=steps,
        height=256,
        width=256,
        guidance_scale=4.5,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        clean_caption=False,
    )
    return out.images


def _timed(pipe, steps, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = _generate(pipe, steps)
        best = min(best, time.perf_counter() - t)
    return best, out


def run_demo(steps: int = 20, repeats: int = 3, out_dir: str | None = None) -> int:
    import torch

    from .. import costs
    from ..diffusers.api import cached
    from ..diffusers.tiny import tiny_pixart_pipeline
    from ..schedule import load_schedule

    torch.set_grad_enabled(False)
    pipe = tiny_pixart_pipeline("alpha", layers=28, heads=2, head_dim=64, seed=0)
    pipe.set_progress_bar_config(disable=True)
    arch = costs.Arch.from_diffusers_config(dict(pipe.transformer.config), name="demo-pixart-alpha")
    print(
        f"demo model: diffusers PixArtTransformer2DModel, 28 blocks, hidden {arch.hidden}, random weights; "
        f"256x256, {steps} steps, CFG batch 2, best of {repeats}"
    )
    _generate(pipe, 2)  # warm-up
    base_t, base = _timed(pipe, steps, repeats)
    rows = [{"preset": "no cache", "seconds": round(base_t, 3), "speedup": 1.0}]
    for name in PRESETS:
        s = load_schedule(SCHEDULES / f"{name}.json")
        with cached(pipe, s) as h:
            t, out = _timed(pipe, steps, repeats)
            st = h.stats
        exp = costs.expected_speedup(s, arch, 256, 256, text_tokens=120) if s.steps == steps else None
        rows.append(
            {
                "preset": name,
                "seconds": round(t, 3),
                "speedup": round(base_t / t, 2),
                "expected_speedup_macs": round(exp, 2) if exp else None,
                "paper_A6000_speedup": s.metrics.get("ecad_latency_speedup"),
                "reused_units": f"{st.total_reused}/{st.total_reused + st.total_computed}",
                "max_abs_diff_vs_no_cache": float((out - base).abs().max()),
            }
        )
        print(f"  {name}: {st.summary()}")
    print()
    print(f"{'preset':28s} {'time s':>8s} {'speedup':>8s} {'MACs-expected':>14s} {'paper (A6000)':>14s}  reused")
    for r in rows:
        print(
            f"{r['preset']:28s} {r['seconds']:8.3f} {r['speedup']:7.2f}x "
            f"{(str(r.get('expected_speedup_macs')) + 'x') if r.get('expected_speedup_macs') else '':>14s} "
            f"{(str(r.get('paper_A6000_speedup')) + 'x') if r.get('paper_A6000_speedup') else '':>14s}  "
            f"{r.get('reused_units', '')}"
        )
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "demo_results.json").write_text(json.dumps(rows, indent=2))
        print(f"\nresults written to {Path(out_dir) / 'demo_results.json'}")
    return 0


def cmd_demo(a) -> int:
    return run_demo(steps=a.steps, repeats=a.repeats, out_dir=a.out)


def register(sub) -> None:
    """Add ``demo`` to ``python -m ecad_core``'s subparsers."""
    q = sub.add_parser("demo", help="apply the shipped presets to a built-in tiny PixArt-α and time it")
    q.add_argument("--steps", type=int, default=20)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--out", default=None, help="folder for the demo's images (optional)")
    q.set_defaults(fn=cmd_demo)
