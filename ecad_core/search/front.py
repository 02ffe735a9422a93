"""The Pareto front of a search: schedule files, an index, a plot, and a rule to pick one point.

Objectives (both minimised): ``quality_loss`` (the evaluator's loss; 0 = same
as full compute) and ``compute_fraction`` (MACs of the schedule / MACs of full
compute). ``expected_speedup = 1 / compute_fraction`` (the speedup if time
were proportional to MACs).

Front folder layout (``<out>/front/``)::

    front.json            index: settings, objectives and file of every point
    front.png             the front over all evaluated schedules
    00-x1.00.json ...     one schedule per point (project format), slowest first

Picking one point (``pick``), in this order:

1. ``max_quality_loss`` and ``target_speedup`` both given: among points with
   loss <= max and speedup >= target, the fastest. If none meets both, the
   quality limit wins (rule 2 without the target).
2. ``max_quality_loss`` only: the fastest point whose loss <= max; if no point
   is that good, the lowest-loss point.
3. ``target_speedup`` only: the lowest-loss point whose speedup >= target; if
   no point is that fast, the fastest point (the closest to the target).
4. neither: the knee, the point farthest below the straight line joining the
   front's two ends, with both objectives scaled to [0, 1] over the front
   (the lowest-loss point when the front has fewer than 3 points).

Ties are broken by lower loss, then lower compute.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EcadError
from ..schedule import Schedule, load_schedule

FRONT_INDEX = "front.json"
FRONT_PLOT = "front.png"
INDEX_FORMAT = "comfyui-ecad/search-front"


@dataclass
class FrontPoint:
    schedule: Schedule
    quality_loss: float
    compute_fraction: float
    generation: int = 0
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def expected_speedup(self) -> float:
        return 1.0 / self.compute_fraction if self.compute_fraction > 0 else math.inf

    @property
    def objectives(self) -> tuple[float, float]:
        return (self.quality_loss, self.compute_fraction)

    def as_dict(self) -> dict:
        return {
            "name": self.schedule.name,
            "quality_loss": _num(self.quality_loss),
            "compute_fraction": self.compute_fraction,
            "expected_speedup": self.expected_speedup,
            "generation": self.generation,
            "file": self.path.name if self.path else None,
        }


def _num(x: float):
    return x if math.isfinite(x) else None


def pareto_indices(F: np.ndarray) -> list[int]:
    """Indices of the non-dominated rows of F [n, 2] (both minimised), ordered by compute (descending).

    Rows with a non-finite objective are never on the front; of several rows
    with identical objectives only the first is kept.
    """
    F = np.asarray(F, np.float64).reshape(-1, 2)
    idx = [i for i in range(len(F)) if np.isfinite(F[i]).all()]
    # sort by compute, then loss, then original order; sweep keeps strictly better losses
    idx.sort(key=lambda i: (F[i, 1], F[i, 0], i))
    out, best = [], math.inf
    for i in idx:
        if F[i, 0] < best:
            out.append(i)
            best = F[i, 0]
    return out[::-1]


def dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def hypervolume(F, ref=(1.0, 1.0), quality_scale: float = 1.0) -> float:
    """Hypervolume of objective rows F [n, 2] = (quality_loss, compute_fraction), with pymoo's HV.

    The quality loss is divided by ``quality_scale`` first; the reference point
    is fixed (default (1, 1): a loss as large as the reference signal, and full
    compute), so values are comparable across generations and runs with the
    same metric. Points not strictly better than the reference in both
    objectives add nothing.
    """
    from pymoo.indicators.hv import HV

    F = np.asarray(F, np.float64).reshape(-1, 2).copy()
    if not quality_scale > 0:
        raise ValueError(f"quality_scale must be positive, got {quality_scale!r}")
    F[:, 0] /= quality_scale
    ref = np.asarray(ref, np.float64)
    keep = np.isfinite(F).all(1) & (F < ref).all(1)
    if not keep.any():
        return 0.0
    return float(HV(ref_point=ref)(F[keep]))


# -- picking ------------------------------------------------------------------
def pick(
    front: Sequence[FrontPoint], target_speedup: float | None = None, max_quality_loss: float | None = None
) -> FrontPoint:
    """One point of the front by the documented rule (module docstring)."""
    pts = [p for p in front if math.isfinite(p.quality_loss)]
    if not pts:
        raise EcadError("the front is empty: nothing to pick")
    for what, v in (("target_speedup", target_speedup), ("max_quality_loss", max_quality_loss)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0):
            raise ValueError(f"{what} must be a non-negative number, got {v!r}")

    def fastest(c):
        return min(c, key=lambda p: (p.compute_fraction, p.quality_loss))

    def best(c):
        return min(c, key=lambda p: (p.quality_loss, p.compute_fraction))

    eps = 1e-12
    if max_quality_loss is not None:
        ok = [p for p in pts if p.quality_loss <= max_quality_loss + eps]
        if target_speedup is not None:
            both = [p for p in ok if p.expected_speedup >= target_speedup - 1e-9]
            if both:
                return fastest(both)
        return fastest(ok) if ok else best(pts)
    if target_speedup is not None:
        ok = [p for p in pts if p.expected_speedup >= target_speedup - 1e-9]
        return best(ok) if ok else fastest(pts)
    return knee(pts)


def knee(front: Sequence[FrontPoint]) -> FrontPoint:
    pts = sorted(front, key=lambda p: (p.compute_fraction, p.quality_loss))
    if len(pts) < 3:
        return min(pts, key=lambda p: (p.quality_loss, p.compute_fraction))
    q = np.array([p.quality_loss for p in pts])
    c = np.array([p.compute_fraction for p in pts])
    qn = (q - q.min()) / (np.ptp(q) or 1.0)
    cn = (c - c.min()) / (np.ptp(c) or 1.0)
    # line from the fastest end (cn=0, qn=1) to the best end (cn=1, qn=0): qn + cn = 1
    d = 1.0 - (qn + cn)
    return pts[int(np.argmax(d))]


# -- files --------------------------------------------------------------------
def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-")[:60] or "schedule"


def write_front(
    front_dir: str | Path,
    points: Sequence[FrontPoint],
    *,
    info: dict | None = None,
    all_objectives: np.ndarray | None = None,
    seed_objectives: np.ndarray | None = None,
    plot: bool = True,
) -> Path:
    """Write the points (slowest first) as schedule files + ``front.json`` (+ ``front.png``).

    Old ``*.json`` point files of an earlier write are replaced.
    """
    d = Path(front_dir)
    d.mkdir(parents=True, exist_ok=True)
    pts = sorted(points, key=lambda p: (-p.compute_fraction, p.quality_loss))
    old = set(d.glob("*.json")) - {d / FRONT_INDEX}
    written = []
    for i, p in enumerate(pts):
        path = d / f"{i:02d}-x{p.expected_speedup:.2f}.json"
        p.schedule.save(path)
        p.path = path
        written.append(path)
    for f in old - set(written):
        f.unlink()
    index = {"format": INDEX_FORMAT, "version": 1, **(info or {}), "points": [p.as_dict() for p in pts]}
    tmp = d / (FRONT_INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(d / FRONT_INDEX)
    if plot:
        try:
            plot_front(d / FRONT_PLOT, pts, all_objectives, seed_objectives, title=(info or {}).get("title"))
        except ImportError:  # matplotlib is optional
            pass
    return d


def load_front(front_dir: str | Path) -> list[FrontPoint]:
    """The points of a front folder written by ``write_front`` (slowest first)."""
    d = Path(front_dir)
    f = d / FRONT_INDEX
    if not f.is_file():
        raise EcadError(f"{d}: not a front folder (no {FRONT_INDEX})")
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
        entries = index["points"]
    except (ValueError, KeyError, TypeError) as e:
        raise EcadError(f"{f}: not a valid front index ({e})") from None
    out = []
    for entry in entries:
        s = load_schedule(d / entry["file"])
        loss = entry.get("quality_loss")
        out.append(
            FrontPoint(
                s,
                math.inf if loss is None else float(loss),
                float(entry["compute_fraction"]),
                int(entry.get("generation", 0)),
                d / entry["file"],
            )
        )
    return out


def plot_front(
    path: str | Path, front: Sequence[FrontPoint], all_objectives=None, seed_objectives=None, title: str | None = None
) -> Path:
    """PNG of loss vs expected speedup: all evaluated (grey), seeds (blue), front (red)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend change, no display needed

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)

    def xy(F):
        F = np.asarray(F, np.float64).reshape(-1, 2)
        F = F[np.isfinite(F).all(1) & (F[:, 1] > 0)]
        return 1.0 / F[:, 1], F[:, 0]

    ys = []
    if all_objectives is not None and len(all_objectives):
        x, y = xy(all_objectives)
        ax.scatter(x, y, s=8, c="0.7", label="evaluated")
        ys.extend(y.tolist())
    if seed_objectives is not None and len(seed_objectives):
        x, y = xy(seed_objectives)
        ax.scatter(x, y, s=22, marker="x", c="tab:blue", label="initial population")
        ys.extend(y.tolist())
    pts = sorted(front, key=lambda p: p.compute_fraction)
    fx = [p.expected_speedup for p in pts if math.isfinite(p.quality_loss)]
    fy = [p.quality_loss for p in pts if math.isfinite(p.quality_loss)]
    ax.plot(fx, fy, "o-", c="tab:red", ms=4, label="Pareto front")
    ys.extend(fy)
    pos = [v for v in ys if v > 0]
    if pos and max(pos) / min(pos) > 100:
        ax.set_yscale("symlog", linthresh=min(pos))
    ax.set_xlabel("expected speedup (full MACs / schedule MACs)")
    ax.set_ylabel("quality loss (vs full compute)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
