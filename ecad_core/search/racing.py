"""Racing over calibration samples (multi-fidelity evaluation): score a candidate on a few samples first, finish
only those that can still reach the front.

Each new candidate of generation ``g >= 1`` is first run on ``k`` of the ``n`` calibration samples (``race_indices``:
spread evenly over the prompt-major sample list, so every part of it is seen). An optimistic bound on its full loss
is the partial mean times the lowest ratio full mean / partial mean seen among fully evaluated candidates, shrunk by
``margin``. If even that bound is above the best fully evaluated loss at no more compute (MACs are analytic, known
before any run), the candidate is *raced out*: it keeps its partial mean as its loss for NSGA-II's ranking and is
never placed on the front (nor counted in the hypervolume). Otherwise its remaining ``n - k`` samples are run and it
is an ordinary full evaluation.

Decisions use only candidates of earlier generations (as surrogate screening does), so a generation redone after a
cancel decides exactly as the uninterrupted one did. Generation 0 is always evaluated in full: the bound needs data.

The raced-out genomes and the partial / full means of the others are kept in ``racing.json`` beside the checkpoint
(written before it, so it always covers what the checkpoint holds; entries for genomes not in the memo are ignored).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .checkpoint import START_OVER

RACING_FILE = "racing.json"
MIN_HISTORY = 4  # fully evaluated candidates with partial means needed before anything is raced out


def race_indices(n: int, k: int) -> list[int]:
    """``k`` of the sample indices ``0..n-1``, evenly spread (stratified over the prompt-major order)."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) if k > 1 else [n // 2]


class RaceState:
    """What racing remembers: raced-out genomes (key -> partial mean, samples run) and, per fully evaluated genome,
    (partial mean on the race samples, full mean, generation)."""

    def __init__(self) -> None:
        self.raced: dict[bytes, list] = {}  # key -> [partial mean, samples run, generation]
        self.pairs: dict[bytes, list] = {}  # key -> [partial mean, full mean, generation]
        self.images = 0  # calibration samples sampled by evaluations (not the reference), over all sessions

    def to_json(self) -> dict:
        return {
            "raced": {k.hex(): v for k, v in self.raced.items()},
            "pairs": {k.hex(): v for k, v in self.pairs.items()},
            "images": self.images,
        }

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json()))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, memo: dict) -> RaceState:
        """The state in ``path`` restricted to the genomes of ``memo``; a missing file is refused when the memo
        has genomes of evolved generations (their racing marks would be lost)."""
        st = cls()
        if not path.is_file():
            if any(v[2] > 0 for v in memo.values()):
                raise CheckpointError(f"{path}: missing beside a checkpoint of a racing search; {START_OVER}")
            return st
        try:
            d = json.loads(path.read_text())
            for name in ("raced", "pairs"):
                table = getattr(st, name)
                for hk, v in d[name].items():
                    k = bytes.fromhex(hk)
                    if k in memo:
                        table[k] = [float(v[0]), float(v[1]), int(v[2])]
            st.images = int(d.get("images", 0))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise CheckpointError(f"{path}: unreadable racing state ({e}); {START_OVER}") from None
        return st


def _ratios(pairs: list[tuple[float, float]]) -> list[float]:
    return [f / p for p, f in pairs if p > 0 and math.isfinite(p) and math.isfinite(f)]


def can_bound(pairs: list[tuple[float, float]]) -> bool:
    """Whether enough (partial, full) pairs are known to bound a partial mean."""
    return len(_ratios(pairs)) >= MIN_HISTORY


def optimistic_bounds(partial: np.ndarray, pairs: list[tuple[float, float]], margin: float) -> np.ndarray | None:
    """Lower bounds on the full losses of candidates with partial means ``partial``, from (partial, full) pairs
    of fully evaluated ones; None when there are too few pairs to bound anything."""
    ratios = _ratios(pairs)
    if len(ratios) < MIN_HISTORY:
        return None
    return partial * min(ratios) * (1.0 - margin)


def best_at(front: np.ndarray, frac: float) -> float:
    """The lowest loss among fully evaluated (loss, fraction) rows costing at most ``frac``; inf if none."""
    ok = front[front[:, 1] <= frac + 1e-12, 0] if len(front) else front[:0, 0]
    return float(ok.min()) if len(ok) else math.inf


def raced_out(
    partial: np.ndarray, fracs: np.ndarray, full: np.ndarray, pairs: list[tuple[float, float]], margin: float
) -> np.ndarray:
    """Which candidates (partial means ``partial`` at compute fractions ``fracs``) cannot reach the front of the
    fully evaluated (loss, fraction) rows ``full`` even optimistically."""
    bound = optimistic_bounds(partial, pairs, margin)
    if bound is None:
        return np.zeros(len(partial), bool)
    best = np.array([best_at(full, f) for f in fracs])
    return ~np.isnan(bound) & (bound > best)  # a non-finite partial loss is out at once
