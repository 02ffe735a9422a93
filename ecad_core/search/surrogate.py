"""Surrogate pre-screening (issue #19): breed many offspring, send only the promising ones to the model.

In pymoo's vocabulary this is an infill filter between ``ask`` and ``tell``: NSGA-II breeds
``screening x evaluated`` offspring; a ridge regression of log(loss) on staleness features (and, when the search
has the unit probe's table, each unit's probe-estimated reuse error per step), fitted on every genome evaluated so
far (the memo), predicts each one's loss, and the MACs objective is exact and free. The
offspring whose predicted point adds the most hypervolume to the archive's front are kept (greedily, each
pick joining the front), plus a share picked at random for exploration (the surrogate is wrong where it has
seen nothing). Only the kept ones are evaluated and told to NSGA-II, whose survival then works as usual.

Everything is deterministic: the fit depends only on the memo (in its stored order), the random picks draw
from NSGA-II's own generator, whose state the checkpoint saves, so a resumed search finds the same front.
"""

from __future__ import annotations

import math

import numpy as np

from .front import pareto_indices
from .problem import GenomeSpace

ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def _last_computed(space: GenomeSpace, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(computed [n, S, U], last [n, S, U]): for steps 1..S, whether each unit computes and the last step <= it at
    which the unit computed (step 0 always computes)."""
    X = np.asarray(X, bool)
    n, S, U = len(X), space.steps - 1, space.n_units
    computed = X.reshape(n, S, U)
    last = np.zeros((n, S, U), np.int64)
    c = np.zeros((n, U), np.int64)
    for t in range(1, S + 1):
        c = np.where(computed[:, t - 1], t, c)
        last[:, t - 1] = c
    return computed, last


def features(space: GenomeSpace, X: np.ndarray) -> np.ndarray:
    """Per genome: the reuse bits, each unit's staleness (steps since it was last computed) per step, and per
    step the summed staleness and its square (the loss grows faster than linearly with a reuse run)."""
    computed, last = _last_computed(space, X)
    n, S = computed.shape[:2]
    age = (np.arange(1, S + 1)[None, :, None] - last).astype(np.float64)
    return np.concatenate([(~computed).reshape(n, -1), age.reshape(n, -1), age.sum(2), (age**2).sum(2)], 1)


def probe_features(space: GenomeSpace, X: np.ndarray, changes: np.ndarray) -> np.ndarray:
    """Per genome, from the unit probe's table ``changes`` (E[u, t, c], sensitivity.py): each unit's estimated
    reuse error at each step, E[u, t, c] with c its last computed step <= t (0 where it computes), per step the
    sum over units, and the total. The ridge then weighs each unit's error by its effect on the loss (a unit's
    output change is not its effect on the image)."""
    E = np.asarray(changes, np.float64)
    computed, last = _last_computed(space, X)
    n, S, U = computed.shape
    steps = np.arange(1, S + 1)[None, :, None]
    err = np.where(computed, 0.0, E[np.arange(U)[None, None, :], steps, last])
    per_step = err.sum(2)
    return np.concatenate([err.reshape(n, -1), per_step, per_step.sum(1, keepdims=True)], 1)


def screen_features(space: GenomeSpace, X: np.ndarray, changes: np.ndarray | None = None) -> np.ndarray:
    """The surrogate's features: ``features``, and beside them ``probe_features`` when the probe's table is
    given."""
    F = features(space, X)
    return F if changes is None else np.concatenate([F, probe_features(space, X, changes)], 1)


def _rank(v: np.ndarray) -> np.ndarray:
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v))
    return r


class Ridge:
    """Kernel-form ridge regression (few samples, many features), the penalty picked by leave-one-out error;
    ``loo_rank`` is the rank correlation of its leave-one-out predictions with ``y``."""

    def __init__(self, F: np.ndarray, y: np.ndarray):
        self.mu = F.mean(0)
        sd = F.std(0)
        self.sd = np.where(sd > 0, sd, 1.0)
        Z = (F - self.mu) / self.sd
        self.y0 = float(y.mean())
        yc = y - self.y0
        n, p = Z.shape
        # one eigendecomposition for every penalty, of the smaller of Z Z^T (n x n) and Z^T Z (p x p): a long
        # search's archive outgrows the features
        if n <= p:
            lam, Q = np.linalg.eigh(Z @ Z.T)
            Qy = Q.T @ yc
            Q2 = Q**2
        else:
            lam, V = np.linalg.eigh(Z.T @ Z)
            ZV = Z @ V
            Zy = ZV.T @ yc
            ZV2 = ZV**2
        lam = np.maximum(lam, 0.0)
        best = None
        for alpha in ALPHAS:
            d = 1.0 / (lam + alpha * n)
            if n <= p:  # A = (K + alpha n I)^-1; LOO residuals of kernel ridge: c_i / A_ii
                c = Q @ (d * Qy)
                loo = c / np.maximum(Q2 @ d, 1e-12)
            else:  # the same through the hat matrix H = Z (Z^T Z + alpha n I)^-1 Z^T: r_i / (1 - H_ii)
                wv = d * Zy
                loo = (yc - ZV @ wv) / np.maximum(1.0 - ZV2 @ d, 1e-12)
            err = float(np.mean(loo**2))
            if best is None or err < best[0]:
                w = Z.T @ c if n <= p else V @ wv
                best = (err, alpha, w, yc - loo)
        assert best is not None
        self.loo_mse, self.alpha = best[0], best[1]
        self.w = best[2]
        ranks = np.corrcoef(_rank(best[3]), _rank(yc)) if n > 2 else np.ones((2, 2))
        self.loo_rank = float(np.nan_to_num(ranks[0, 1]))

    def predict(self, F: np.ndarray) -> np.ndarray:
        return ((F - self.mu) / self.sd) @ self.w + self.y0


def predict_loss(F: np.ndarray, loss: np.ndarray, F_new: np.ndarray) -> np.ndarray:
    """Losses of ``F_new`` from a ridge fit of ``loss`` (positive) on ``F``: of the fits on the loss and on its
    log, the one whose leave-one-out predictions rank the known losses best (the loss is additive in some
    regimes, multiplicative in others)."""
    lin, log = Ridge(F, loss), Ridge(F, np.log(loss))
    if log.loo_rank >= lin.loo_rank:
        return np.exp(log.predict(F_new))
    return np.maximum(lin.predict(F_new), 0.5 * float(loss.min()))  # a linear fit can go below 0


def _hv2(P: np.ndarray) -> float:
    """Hypervolume of points (loss, fraction), both scaled to the (1, 1) reference box."""
    P = P[(P[:, 0] < 1) & (P[:, 1] < 1)]
    if not len(P):
        return 0.0
    P = P[np.argsort(P[:, 1], kind="stable")]
    hv, best = 0.0, 1.0
    for loss, frac in P:  # ascending fraction: each point adds the strip below the best loss so far
        if loss < best:
            hv += (best - loss) * (1.0 - frac)
            best = loss
    return hv


def _gap(front: np.ndarray, p: np.ndarray) -> float:
    """How much lower ``p``'s loss must be to join ``front`` (0 when it already does)."""
    ok = front[front[:, 1] <= p[1]]
    return max(0.0, float(p[0] - ok[:, 0].min())) if len(ok) else 0.0


def screen(
    space: GenomeSpace,
    cand: np.ndarray,
    fracs: np.ndarray,
    known_X: np.ndarray,
    known_F: np.ndarray,
    keep: int,
    explore: float,
    quality_scale: float,
    rng: np.random.Generator,
    changes: np.ndarray | None = None,
) -> list[int]:
    """Indices (in ``cand``) of the ``keep`` offspring to evaluate. ``known_X`` / ``known_F``: the evaluated
    genomes and their (loss, fraction); ``changes``: the unit probe's table (its features join the fit)."""
    n = len(cand)
    if n <= keep:
        return list(range(n))
    fit = np.isfinite(known_F[:, 0]) & (known_F[:, 0] > 0)
    n_rand = min(keep, max(1, math.ceil(explore * keep))) if explore > 0 else 0
    if fit.sum() < 4:  # nothing to learn from yet: all random
        n_rand = keep
    picked: list[int] = []
    if n_rand < keep:
        F_known, F_cand = (screen_features(space, x, changes) for x in (known_X[fit], cand))
        pred = predict_loss(F_known, known_F[fit, 0], F_cand)
        scaled = np.stack([pred / quality_scale, fracs], 1)
        arch = known_F[np.isfinite(known_F[:, 0])].copy()
        arch[:, 0] = arch[:, 0] / quality_scale
        front = arch[pareto_indices(arch)] if len(arch) else np.zeros((0, 2))
        base = _hv2(front)
        left = list(range(n))
        for _ in range(keep - n_rand):
            scores = []
            for i in left:
                gain = _hv2(np.vstack([front, scaled[i : i + 1]])) - base
                scores.append(gain if gain > 0 else -_gap(front, scaled[i]))
            j = left.pop(int(np.argmax(scores)))  # first of equals: deterministic
            picked.append(j)
            front = np.vstack([front, scaled[j : j + 1]])
            front = front[pareto_indices(front)]
            base = _hv2(front)
    rest = [i for i in range(n) if i not in picked]
    picked += [rest[i] for i in sorted(rng.choice(len(rest), size=keep - len(picked), replace=False))]
    return sorted(picked)
