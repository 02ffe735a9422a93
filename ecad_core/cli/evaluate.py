"""``python -m ecad_core eval``: compare schedules with no cache on speed, compute and quality.

``register(subparsers)`` adds the subcommand; bad input raises
EcadError/ValueError (the main CLI prints one line and exits 2).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

from ..errors import EcadError
from ..metrics.names import METRICS
from ..prompts import PROMPT_SETS
from .common import add_model_arg, add_sampling_args, check_seeds

SHIPPED_SCHEDULES = Path(__file__).resolve().parents[2] / "schedules"


def resolve_schedule(value: str):
    """A schedule file, or the name of a shipped preset (``pixart-alpha-256-fast``)."""
    from ..schedule import load_schedule

    p = Path(value)
    if p.is_file():
        return load_schedule(p)
    shipped = SHIPPED_SCHEDULES / f"{value}.json"
    if shipped.is_file():
        return load_schedule(shipped)
    names = sorted(q.stem for q in SHIPPED_SCHEDULES.glob("*.json"))
    raise EcadError(f"schedule {value!r}: no such file, and not a shipped preset (shipped: {', '.join(names)})")


def _image_saver(out: Path, seeds):
    """``on_outputs`` callback: every image of a row under ``out/images/NN_<label>/``."""
    from ..evaluation.grid import as_display, save_png

    count = itertools.count()

    def save(row) -> None:
        d = out / "images" / f"{next(count):02d}_{row.label.replace(' ', '-').replace('/', '_')}"
        for i, (img, seed) in enumerate(zip(row.outputs, seeds)):
            save_png(as_display(img).permute(1, 2, 0), d / f"{i:04d}_seed{seed}.png")

    return save


def cmd_eval(a) -> int:
    check_seeds(a.seeds)
    from ..diffusers.eval import DiffusersImages, pipeline_cost
    from ..diffusers.pipelines import load_pipeline
    from ..evaluation.grid import comparison_grid, save_png
    from ..evaluation.report import to_markdown, write_reports
    from ..evaluation.runner import run_evaluation
    from ..evaluation.suite import MetricSuite, MetricWeights, parse_metrics
    from ..prompts import load_eval_prompts

    if (a.prompts is None) == (a.prompts_set is None):
        raise EcadError("give the prompts with exactly one of --prompts FILE or --prompts-set NAME")
    prompts = load_eval_prompts(a.prompts, a.prompts_set, a.num_prompts)
    schedules: list = []
    labels: set[str] = set()
    for v in a.schedule:
        label = Path(v).stem if Path(v).is_file() else v
        label = label if label not in labels else f"{label} ({len(schedules) + 1})"  # rows must stay apart
        labels.add(label)
        schedules.append((label, resolve_schedule(v)))
    steps = a.steps or schedules[0][1].steps
    for what, v in (("--steps", steps), ("--height", a.height), ("--width", a.width), ("--grid-rows", a.grid_rows)):
        if v < 1:
            raise EcadError(f"{what} must be >= 1, got {v}")
    metrics = parse_metrics(a.metrics)  # before the slow part: a typo fails at once
    weights = MetricWeights(
        clip=a.clip_weights, imagereward=a.imagereward_weights, lpips=a.lpips_weights, inception=a.inception_weights
    )
    pipe, _ = load_pipeline(a.model, a.device, a.dtype)
    if a.quiet:
        pipe.set_progress_bar_config(disable=True)
    cost, layout = pipeline_cost(pipe, steps, a.height, a.width)
    for _label, s in schedules:
        s.check_fits(layout, a.model)
    dev = str(getattr(pipe, "_execution_device", None) or a.device or "cpu")
    suite = MetricSuite.load(metrics, weights, fid_reference=a.fid_reference, device=dev)
    gen = DiffusersImages(
        pipe, prompts, a.seeds, steps, a.cfg, a.height, a.width, batch_size=a.batch_size, model_name=a.model
    )
    settings = {
        "model": a.model,
        "prompts": a.prompts or a.prompts_set,
        "num_prompts": len(prompts),
        "seeds": list(a.seeds),
        "steps": steps,
        "cfg": a.cfg,
        "height": a.height,
        "width": a.width,
        "device": dev,
        "dtype": a.dtype,
        "warmup": not a.no_warmup,
        "schedules": {label: a.schedule[i] for i, (label, _) in enumerate(schedules)},
        "weights": {k: str(v) if v else None for k, v in vars(weights).items()},
        "fid_reference": a.fid_reference,
    }
    t0 = time.monotonic()
    say = (
        (lambda msg: None)
        if a.quiet
        else (lambda msg: print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr))
    )
    out = Path(a.out)
    res = run_evaluation(
        gen,
        schedules,
        suite,
        sample_prompts=gen.sample_prompts,
        sample_seeds=gen.sample_seeds,
        cost=cost,
        warmup=not a.no_warmup,
        settings=settings,
        progress=say,
        keep_outputs=a.grid_rows,
        on_outputs=_image_saver(out, gen.sample_seeds) if a.save_images else None,
    )
    paths = write_reports(res, out)
    grid = comparison_grid(res.rows[0].outputs, [(r.label, r.outputs) for r in res.rows[1:]], rows=a.grid_rows)
    paths["grid"] = save_png(grid, out / "grid.png")
    print(to_markdown(res))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(subparsers) -> None:
    """Add ``eval`` to ``python -m ecad_core``'s subparsers."""
    q = subparsers.add_parser(
        "eval",
        help="compare schedules with no cache: latency, MACs, PSNR/SSIM/LPIPS, CLIP, ImageReward, FID",
        description="Generate the same prompts and seeds without a cache and with each schedule, and report "
        "latency per image and MACs beside fidelity to full compute (PSNR, SSIM, LPIPS), CLIP "
        "score, ImageReward and FID, as JSON, CSV and a markdown table, plus a comparison grid. "
        "Metrics whose local weights are not given are skipped with a note.",
    )
    add_model_arg(q)
    q.add_argument(
        "--schedule",
        action="append",
        required=True,
        help="schedule file or shipped preset name; repeat to compare several",
    )
    q.add_argument(
        "--prompts",
        default=None,
        help="prompts file: .txt, .tsv (column Prompt), JSON list, MJHQ-30K meta_data.json or COCO captions json",
    )
    q.add_argument("--prompts-set", default=None, choices=list(PROMPT_SETS), help="a shipped prompt set")
    q.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    q.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per prompt (default: 0)")
    q.add_argument("--steps", type=int, default=None, help="default: the first schedule's steps")
    add_sampling_args(q)
    q.add_argument(
        "--metrics",
        default="all",
        help=f"comma-separated subset of {', '.join(METRICS)} (default: all; those without weights "
        "are skipped with a note)",
    )
    q.add_argument("--clip-weights", default=None, help="transformers CLIPModel folder (CLIP score)")
    q.add_argument(
        "--imagereward-weights",
        default=None,
        help="THUDM/ImageReward's ImageReward.pt (or its folder), with med_config.json and a "
        "tokenizer/ folder (bert-base-uncased) beside it",
    )
    q.add_argument(
        "--lpips-weights",
        default=None,
        help="folder with the lpips package's alex.pth and torchvision's alexnet-owt-7be5be79.pth",
    )
    q.add_argument("--inception-weights", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (FID)")
    q.add_argument(
        "--fid-reference", default=None, help="folder of reference images (e.g. COCO, MJHQ) for a second FID column"
    )
    q.add_argument("--grid-rows", type=int, default=4, help="samples shown in grid.png (default 4)")
    q.add_argument("--save-images", action="store_true", help="also save every image under OUT/images/")
    q.add_argument("--no-warmup", action="store_true", help="do not run one untimed sample before each set")
    q.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    q.add_argument("--out", required=True, help="folder for eval.json, eval.csv, eval.md and grid.png")
    q.set_defaults(fn=cmd_eval)
