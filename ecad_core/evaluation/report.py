"""An evaluation's results as JSON, CSV and a markdown table (speed and compute beside quality).

Cells: a number; "—" where a metric does not apply (fidelity of the no-cache
row to itself); "n/a" where it was skipped, with the reason in a note under the
table (and in JSON ``skipped``). Infinite values (PSNR of identical images) are
"inf" in JSON/CSV and "∞" in markdown.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .runner import EvaluationResult, ScheduleResult

HEADERS = {
    "psnr": "PSNR dB ↑",
    "ssim": "SSIM ↑",
    "lpips": "LPIPS ↓",
    "clip": "CLIP score ↑",
    "imagereward": "ImageReward ↑",
    "fid": "FID vs no cache ↓",
    "fid_ref": "FID vs reference ↓",
    "latent_rel_mse": "latent rel. MSE ↓",
}
FIDELITY_COLUMNS = ("psnr", "ssim", "lpips", "latent_rel_mse", "fid")
NOT_APPLICABLE, SKIPPED = "—", "n/a"


def _num(v):
    """JSON-safe number: inf/-inf/nan as strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _num(obj)


def _metric_cell(res: EvaluationResult, row: ScheduleResult, col: str):
    if col in row.metrics:
        return row.metrics[col]
    if row.schedule is None and col in FIDELITY_COLUMNS:
        return NOT_APPLICABLE
    return SKIPPED  # the reason is in res.skipped


def row_dict(res: EvaluationResult, row: ScheduleResult) -> dict:
    s = row.schedule
    return {
        "label": row.label,
        "schedule": s.name if s is not None else None,
        "steps": s.steps if s is not None else res.settings.get("steps"),
        "samples": row.samples,
        "seconds": row.seconds,
        "seconds_per_image": row.latency,
        "measured_speedup": row.speedup,
        "reuse_fraction": row.reuse_fraction,
        "tmacs": row.cost.get("tmacs"),
        "compute_fraction": row.cost.get("compute_fraction"),
        "expected_speedup": row.cost.get("expected_speedup"),
        "cost_model": row.cost.get("cost_model"),
        "metrics": {c: _metric_cell(res, row, c) for c in res.columns},
        "per_sample": row.per_sample,
    }


def to_json_dict(res: EvaluationResult) -> dict:
    return _clean(
        {
            "settings": res.settings,
            "outputs": res.kind,
            "columns": res.columns,
            "skipped": res.skipped,
            "samples": [
                {"prompt": p, "seed": s}
                for p, s in zip(res.sample_prompts, res.sample_seeds or [None] * len(res.sample_prompts))
            ],
            "rows": [row_dict(res, r) for r in res.rows],
        }
    )


CSV_FIXED = [
    "label",
    "schedule",
    "steps",
    "samples",
    "seconds_per_image",
    "measured_speedup",
    "reuse_fraction",
    "tmacs",
    "compute_fraction",
    "expected_speedup",
    "cost_model",
]


def to_csv(res: EvaluationResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIXED + res.columns)
    for r in res.rows:
        d = row_dict(res, r)
        w.writerow(
            [_num(d[k]) if d[k] is not None else "" for k in CSV_FIXED] + [_num(d["metrics"][c]) for c in res.columns]
        )
    return buf.getvalue()


def _fmt(v, digits: int = 4) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return NOT_APPLICABLE
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def to_markdown(res: EvaluationResult) -> str:
    """The comparison table with notes (skipped metrics, what the columns mean)."""
    head = ["schedule", "s/image", "speedup", "TMACs", "MACs speedup", "reused"] + [HEADERS[c] for c in res.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res.rows:
        tm = r.cost.get("tmacs")
        cells = [
            r.label,
            f"{r.latency:.4g}",
            f"{r.speedup:.2f}×" if r.speedup else NOT_APPLICABLE,
            f"{tm:.4g}" if tm is not None else SKIPPED,
            f"{r.cost['expected_speedup']:.2f}×" if r.cost.get("expected_speedup") else SKIPPED,
            f"{100 * r.reuse_fraction:.1f}%" if r.reuse_fraction is not None else SKIPPED,
        ]
        cells += [_fmt(_metric_cell(res, r, c)) for c in res.columns]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(res.sample_prompts)
    notes = [
        f"{n} sample(s) per row, same prompts and seeds; fidelity columns compare each image with the "
        "no-cache image of the same prompt and seed."
    ]
    models = {r.cost.get("cost_model") for r in res.rows if r.cost}
    if "macs" in models:
        notes.append("TMACs per image as ECAD counts them (transformer linear layers, CFG batch of 2).")
    elif models:
        notes.append("no analytic MACs model for this transformer: 'MACs speedup' is the recompute-count ratio.")
    if "fid" in res.columns and "fid" not in res.skipped:
        notes.append(f"FID on {n} image(s) is strongly biased for small sets; compare rows, not papers.")
    for m, why in res.skipped.items():
        notes.append(f"{m} skipped: {why}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"


def write_reports(res: EvaluationResult, out_dir: str | Path, stem: str = "eval") -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.csv`` and ``<stem>.md`` in ``out_dir``; returns their paths."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / f"{stem}.json", "csv": d / f"{stem}.csv", "markdown": d / f"{stem}.md"}
    paths["json"].write_text(json.dumps(to_json_dict(res), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["csv"].write_text(to_csv(res), encoding="utf-8")
    paths["markdown"].write_text(to_markdown(res), encoding="utf-8")
    return paths
