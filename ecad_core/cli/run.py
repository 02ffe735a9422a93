"""``python -m ecad_core run``: generate images with a schedule on a diffusers pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .common import add_model_and_prompt_args, check_seeds, prompts_from_args


def cmd_run(a) -> int:
    check_seeds(a.seeds)
    from ..diffusers.generate import diffusers_generate_fn
    from ..diffusers.pipelines import load_pipeline
    from ..schedule import load_schedule

    prompts = prompts_from_args(a)
    schedule = load_schedule(a.schedule) if a.schedule else None
    steps = a.steps or (schedule.steps if schedule is not None else 20)
    pipe, _ = load_pipeline(a.model, a.device, a.dtype)
    gen = diffusers_generate_fn(
        pipe,
        prompts,
        a.seeds,
        steps,
        a.cfg,
        a.height,
        a.width,
        output="image",
        batch_size=a.batch_size,
        model_name=a.model,
    )
    t = time.perf_counter()
    images = gen(schedule)
    secs = time.perf_counter() - t
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    files = []
    i = 0
    for pi, p in enumerate(prompts):
        for seed in gen.seeds:
            arr = (images[i].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            f = out / f"{pi:03d}_seed{seed}.png"
            Image.fromarray(arr).save(f)
            files.append({"file": f.name, "prompt": p, "seed": seed})
            i += 1
    stats = [s.as_dict() for s in gen.last_stats] if schedule is not None else []
    if schedule is not None:
        reused = sum(s["reused"] for s in stats)
        total = reused + sum(s["computed"] for s in stats)
        line = (
            f"{reused}/{total} unit calls reused ({100 * reused / max(total, 1):.1f}%) with schedule "
            f"{schedule.name!r} over {len(stats)} pipeline call(s)"
        )
    else:
        line = "no schedule: full compute"
    report = {"schedule": a.schedule, "steps": steps, "images": files, "seconds": round(secs, 3), "stats": stats}
    (out / "run.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(line)
    print(f"wrote {len(files)} image(s) to {out} in {secs:.2f}s")
    return 0


def register(subparsers) -> None:
    """Add ``run`` to ``python -m ecad_core``'s subparsers."""
    q = subparsers.add_parser(
        "run",
        help="generate images with a schedule on a diffusers pipeline",
        description="Generate PNG images with a cache schedule applied (or full compute "
        "without --schedule) and print how many unit calls were reused.",
    )
    add_model_and_prompt_args(q)
    q.add_argument("--schedule", default=None, help="schedule file (project or ECAD format)")
    q.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    q.add_argument("--seeds", type=int, nargs="+", default=[0])
    q.add_argument("--steps", type=int, default=None, help="default: the schedule's steps (20 without one)")
    q.add_argument("--out", required=True, help="folder for the PNG images and run.json")
    q.set_defaults(fn=cmd_run)
