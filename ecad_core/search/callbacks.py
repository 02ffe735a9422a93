"""What the search reports while it runs: progress (``progress(phase, done, total)``), the log, and the
per-generation history record kept in the checkpoint and ``progress.json``."""

from __future__ import annotations

import logging

import numpy as np

from .evaluate import Progress
from .front import hypervolume, pareto_indices

log = logging.getLogger("ecad.search")


class SearchCallback:
    """Forwards the search's events to a ``progress`` function (phases ``reference``, ``evaluate``,
    ``generation``; see ``run_search``) and to the log."""

    def __init__(self, progress: Progress | None = None):
        self.progress = progress

    def evaluating(self, done: int, total: int) -> None:
        """``done`` of the ``total`` new schedules of the current generation are evaluated."""
        if self.progress:
            self.progress("evaluate", done, total)

    def generation_done(self, record: dict, total_generations: int) -> None:
        if self.progress:
            self.progress("generation", record["generation"] + 1, total_generations)
        log.info(
            "ECAD search: generation %d: %d new, %d memo hits, front %d, HV %.6f",
            record["generation"],
            record["evaluated"],
            record["memo_hits"],
            record["front_size"],
            record["hypervolume"],
        )


def history_record(
    g: int, keys: list[bytes], memo: dict, archive: np.ndarray, quality_scale: float, elapsed_s: float
) -> dict:
    """The history entry of generation ``g``, whose population had the genome ``keys``."""
    hv = hypervolume(archive, quality_scale=quality_scale)
    # first evaluated in this generation, also by a session cancelled inside it: a resumed history is
    # the uninterrupted one
    n_new = len({k for k in keys if memo[k][2] == g})
    return {
        "generation": g,
        "asked": len(keys),
        "evaluated": n_new,
        "memo_hits": len(keys) - n_new,
        "evaluations_total": len(memo),
        "front_size": len(pareto_indices(archive)),
        "hypervolume": hv,
        "elapsed_s": round(elapsed_s, 3),
    }
