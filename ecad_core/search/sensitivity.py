"""Schedules from the unit probe: which steps to compute, found without running the model on candidates.

``ecad_core.engine.probe`` measures, on one full-compute run, ``E[u, t, c]``: how much unit u's output changed
between steps c and t. Reusing at step t what was computed at step c errs by about that much, so the error of a
step row (every unit computed at the same steps, as FORA's every-n, but at any steps) is estimated as
``sum_t sum_u E[u, t, last computed step <= t]``. For every number k of computed steps the row with the least
estimated error is found exactly (dynamic programming over (steps so far, computed so far, last computed step));
those rows are the *probe seeds* of the initial population (``SearchSettings.probe_seeds``).

Measured on the trained test models (docs/search.md): a generation 0 with the probe seeds reaches a higher
hypervolume than NSGA-II without them after 265 model runs; the probe costs one run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import CheckpointError, SearchSettingsError
from ..schedule import Schedule
from .problem import GenomeSpace

log = logging.getLogger("ecad.search")

# the probe's table kept in a search folder, so that a resume seeds exactly as the first call did
UNIT_PROBE_FILE = "unit_probe.safetensors"


def default_probe_seeds(population: int, steps: int) -> int:
    """How many probe seeds a search takes when not told: every row (steps - 1) while 4 places of the population
    stay for the heuristics (no-cache, every-n, ...)."""
    return max(1, min(steps - 1, population - 4))


def save_unit_changes(path: str | Path, changes: np.ndarray, probe_seeds: int) -> Path:
    """Write the probe's table (safetensors: data only) with the number of seeds taken from it."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {"ecad_unit_probe": json.dumps({"probe_seeds": int(probe_seeds)})}
    save_file({"changes": np.ascontiguousarray(changes, dtype=np.float64)}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_unit_changes(path: str | Path) -> tuple[np.ndarray, int]:
    """(table, probe seeds) from ``save_unit_changes``'s file; CheckpointError naming the file if unreadable."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["ecad_unit_probe"])
            changes = f.get_tensor("changes")
        n = meta["probe_seeds"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or changes.ndim != 3:
            raise ValueError("unexpected content")
    except Exception as e:  # noqa: BLE001 - any damage: one message naming the file
        raise CheckpointError(f"{path}: not a readable unit-probe file ({e}); delete it to probe again") from None
    return changes, n


def parse_probe_seeds(value: int | str | None, input_name: str = "probe seeds") -> int | None:
    """A requested number of probe seeds as the user gave it: None for auto (None, the CLI's ``"auto"``, the node's
    -1), else the number (an int, or its string from the command line). SearchSettingsError naming ``input_name``
    (``--probe-seeds``, ``probe_seeds``) for anything else."""
    n: object = value
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            n = None if text == "auto" else int(text)
        except ValueError:
            n = "bad"
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < -1:  # a bool is no number here
        raise SearchSettingsError(f"{input_name} must be auto or an integer >= 0 (-1: auto), got {value!r}")
    return None if n == -1 else int(n)


def resolve_probe_seeds(
    requested: int | str | None,
    out_dir: str | Path | None,
    population: int,
    steps: int,
    *,
    input_name: str = "probe seeds",
) -> int:
    """The probe seeds a search takes: ``requested`` if a number (>= 0; ``parse_probe_seeds``'s forms), else
    *auto*: what a search in ``out_dir`` started with (its probe file), 0 for one started without the probe (its
    checkpoint resumes as it was), and ``default_probe_seeds`` for a new search."""
    from .checkpoint import CHECKPOINT_FILE

    n = parse_probe_seeds(requested, input_name)
    if n is not None:
        return n
    if out_dir is not None:
        out = Path(out_dir)
        if (out / UNIT_PROBE_FILE).is_file():
            return load_unit_changes(out / UNIT_PROBE_FILE)[1]
        if (out / CHECKPOINT_FILE).is_file():
            return 0
    return default_probe_seeds(population, steps)


class UnitChanges(NamedTuple):
    """What ``unit_changes_for`` found: the table for ``run_search(unit_changes=)`` (None: no probe seeds), the
    probe seeds the search takes (the requested ones, or 0 when skipped), whether the probe's run ran here (its
    images were sampled) and why the probe was skipped (None: it was not)."""

    changes: np.ndarray | None
    probe_seeds: int
    probed: bool
    skipped: str | None = None


def unit_changes_for(
    out_dir: str | Path | None,
    probe_seeds: int,
    run_probe: Callable[[], np.ndarray | None],
    *,
    host: str = "this model",
) -> UnitChanges:
    """The probe's table for a search that takes ``probe_seeds`` (none when 0): read from ``out_dir`` if an earlier
    call kept it there, else probed by ``run_probe()`` and kept (a resume must seed exactly as the first call did).

    ``run_probe()`` returns None when its run computed no unit through the engine (the pack fell back to running
    the model uncached, or its units run outside the engine): the probe cannot measure anything, which is not the
    user's error (they cannot know). Then one warning says what, where and on which ``host``, the search runs
    without probe seeds (0, also when asked for explicitly) and nothing is kept, so a resume does the same."""
    if not probe_seeds:
        return UnitChanges(None, 0, False)
    path = Path(out_dir) / UNIT_PROBE_FILE if out_dir is not None else None
    if path is not None and path.is_file():
        return UnitChanges(load_unit_changes(path)[0], probe_seeds, False)
    changes = run_probe()
    if changes is None:
        why = (
            "the unit probe measured no unit through the ECAD engine (the model ran uncached: the pack fell back "
            "to no cache, or its units run outside the engine)"
        )
        log.warning(
            "ECAD search in %s on %s: %s; the search runs without its %d probe seed(s)",
            out_dir if out_dir is not None else "(no search folder)",
            host,
            why,
            probe_seeds,
        )
        return UnitChanges(None, 0, True, why)
    if path is not None:
        save_unit_changes(path, changes, probe_seeds)
    return UnitChanges(changes, probe_seeds, True)


def check_changes(changes, space: GenomeSpace) -> np.ndarray:
    """The probe's table as float64 [units, steps, steps], or SearchSettingsError naming what is wrong."""
    E = np.asarray(changes, dtype=np.float64)
    want = (space.n_units, space.steps, space.steps)
    if E.shape != want:
        raise SearchSettingsError(
            f"the unit probe's table has shape {E.shape}, the search needs {want} (units x steps x steps): "
            "probe the same model at the same number of steps"
        )
    if not np.isfinite(E).all() or (E < 0).any():
        raise SearchSettingsError("the unit probe's table has negative or non-finite changes")
    return E


def step_rows(changes: np.ndarray) -> list[np.ndarray]:
    """``rows[k - 1]``: bool [steps], k steps computed (step 0 among them), the least estimated error
    ``sum_t E[t, last computed step <= t]`` with ``E = changes.sum(units)``; k = 1 .. steps."""
    E = np.asarray(changes, np.float64).sum(axis=0)
    T = E.shape[0]
    inf = np.inf
    # g[k, c]: least error over steps 0..t with k computed, the last at c (rolled over t)
    g = np.full((T + 1, T), inf)
    g[1, 0] = 0.0
    came: list[np.ndarray] = [np.zeros(T + 1, dtype=np.int64)]  # came[t][k]: last computed step before t
    for t in range(1, T):
        best_prev = g[:, :t].argmin(axis=1)  # per k, the best last step before t
        best_val = g[np.arange(T + 1), best_prev]
        g[:, :t] += E[t, :t]  # reuse at t
        g[1:, t] = best_val[:-1]  # compute at t: one more computed step
        came.append(np.concatenate([[0], best_prev[:-1]]))
    rows = []
    for k in range(1, T + 1):
        c = int(g[k].argmin())
        row = np.zeros(T, bool)
        kk = k
        for t in range(T - 1, 0, -1):
            if c == t:
                row[t] = True
                c, kk = int(came[t][kk]), kk - 1
        row[0] = True
        rows.append(row)
    return rows


def probe_seeds(space: GenomeSpace, changes, n: int) -> list[Schedule]:
    """Up to ``n`` schedules from the probe's rows, spread over the number of computed steps (no-cache, which
    the heuristics hold, left out)."""
    E = check_changes(changes, space)
    rows = step_rows(E)[: space.steps - 1]
    if n <= 0 or not rows:
        return []
    if n < len(rows):  # spread over the number of computed steps
        rows = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int))]
    out = []
    for row in rows:
        bits = np.repeat(row[:, None], space.n_units, axis=1)
        k = int(row.sum())
        steps = [int(t) for t in np.flatnonzero(row)]
        out.append(
            Schedule(
                space.layout,
                bits,
                name=f"probe-{k}-of-{space.steps}-steps",
                provenance={"search_seed": {"kind": "unit-probe", "computed_steps": steps}},
            )
        )
    return out


__all__ = [
    "UNIT_PROBE_FILE",
    "UnitChanges",
    "check_changes",
    "default_probe_seeds",
    "load_unit_changes",
    "parse_probe_seeds",
    "probe_seeds",
    "resolve_probe_seeds",
    "save_unit_changes",
    "step_rows",
    "unit_changes_for",
]
