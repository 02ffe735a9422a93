"""Draws docs/remap.svg: where each step of a run sits on a schedule (ecad_core/schedule/remap.py), for the
"Fitting a run" section of docs/schedule-format.md. Every box is computed by the rule itself, so the picture
cannot drift from the code: `python scripts/make_remap_figure.py` rewrites it (tests/test_remap.py checks it is
up to date)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ecad_core.schedule.remap import Slice, source_steps, trajectory_rows  # noqa: E402

OUT = REPO / "docs" / "remap.svg"
# one unit of a 5-step schedule: recompute at rows 0, 2 and 3
SOURCE = np.array([[1], [0], [1], [1], [0]], bool)
CASES = [
    ("the schedule: 5 rows (one unit)", None),
    ("10 steps: each row over the steps of its share", Slice(10)),
    ("3 steps: rows merge, none dropped", Slice(3)),
    ("img2img, denoise 0.5 of 10 steps: steps 5\u20139", Slice(5, 5, 10)),
    ("split run, stage 1: steps 0\u20132 of 10", Slice(3, 0, 10)),
    ("split run, stage 2: steps 3\u20139 of 10 (* its first step computes: nothing is cached yet)", Slice(7, 3, 10)),
]
W, LEFT, ROW_H, BOX_H, TOP = 560, 10, 58, 24, 28
ON, OFF, DIM = "#c0392b", "#f4d03f", "#eeeeee"


def _box(x, y, w, fill, text, stroke="#333"):
    return (
        f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{BOX_H}" fill="{fill}" stroke="{stroke}"/>'
        f'<text x="{x + w / 2:.1f}" y="{y + 16}" font-size="11" text-anchor="middle">{text}</text>'
    )


def svg() -> str:
    S = SOURCE.shape[0]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W + 2 * LEFT}" height="{TOP + ROW_H * len(CASES) + 30}" '
        'font-family="sans-serif">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">Where each step of a run sits on a schedule '
        "(trajectory time axis, left = high noise)</text>",
    ]
    for i, (title, sl) in enumerate(CASES):
        y = TOP + i * ROW_H
        parts.append(f'<text x="{LEFT}" y="{y + 12}" font-size="12">{title}</text>')
        yb = y + 18
        if sl is None:
            for s in range(S):
                fill = ON if SOURCE[s, 0] else OFF
                parts.append(_box(LEFT + s * W / S, yb, W / S, fill, f"row {s}"))
            continue
        F = sl.full
        rows = trajectory_rows(SOURCE, sl)
        for j in range(F):
            x, w = LEFT + j * W / F, W / F
            if not sl.start <= j < sl.start + sl.steps:
                parts.append(_box(x, yb, w, DIM, "", stroke="#bbb"))
                continue
            t = j - sl.start
            on = bool(rows[t, 0]) or t == 0  # a run's first step computes: nothing is cached yet
            label = "+".join(str(s) for s in source_steps(S, F, j)) + ("*" if on and not rows[t, 0] else "")
            parts.append(_box(x, yb, w, ON if on else OFF, label))
    yl = TOP + ROW_H * len(CASES) + 6
    parts.append(_box(LEFT, yl, 22, ON, ""))
    parts.append(f'<text x="{LEFT + 28}" y="{yl + 16}" font-size="11">recompute</text>')
    parts.append(_box(LEFT + 100, yl, 22, OFF, ""))
    parts.append(f'<text x="{LEFT + 128}" y="{yl + 16}" font-size="11">reuse</text>')
    parts.append(_box(LEFT + 180, yl, 22, DIM, "", stroke="#bbb"))
    parts.append(
        f'<text x="{LEFT + 208}" y="{yl + 16}" font-size="11">not in this run; numbers: the rows a step reads</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    OUT.write_text(svg(), encoding="utf-8")
    print(f"wrote {OUT}")
