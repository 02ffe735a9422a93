"""Generate a sample set without a cache and with each schedule (same prompts, seeds), time it, score it.

Backend-agnostic: ``generate(schedule_or_None) -> list of outputs`` (one per
sample, always in the same order; images [3, H, W] in [0, 1], or latents when
there is no decoder) is supplied by the caller, a diffusers pipeline
(``DiffusersGenerate``) or a ComfyUI node. Optional members of ``generate``:

* ``warmup(schedule_or_None)``: one short untimed run before each timed set,
  so that model loading, hook installation and first-call allocations are not
  billed to whichever set runs first;
* ``reuse_fraction()``: the share of unit calls served from the cache in the
  last run (engine statistics), reported beside the timing.

Latency is wall time of the whole ``generate`` call divided by the number of
samples (text encoding included when ``generate`` does it; the diffusers
helper encodes each prompt once and reuses it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..schedule import Schedule, remap_steps
from .suite import MetricSuite

NO_CACHE = "no cache"
Progress = Callable[[str], None]


@dataclass
class ScheduleResult:
    """One row of the report: a schedule (or no cache), its timing, cost and scores."""

    label: str
    schedule: Schedule | None
    outputs: list
    seconds: float
    samples: int
    cost: dict = field(default_factory=dict)
    reuse_fraction: float | None = None
    metrics: dict = field(default_factory=dict)
    per_sample: dict = field(default_factory=dict)
    speedup: float | None = None  # measured: no-cache latency / this latency

    @property
    def latency(self) -> float:
        return self.seconds / max(self.samples, 1)


@dataclass
class EvaluationResult:
    rows: list[ScheduleResult]
    columns: list[str]
    skipped: dict
    sample_prompts: list
    sample_seeds: list
    kind: str
    settings: dict


def cost_function(cost) -> Callable[[Schedule | None], dict]:
    """Cost facts of a schedule from a search ``ComputeCost`` (``ecad_core.costs.compute``)."""

    def facts(schedule: Schedule | None) -> dict:
        if schedule is not None and schedule.steps != cost.steps:
            schedule = remap_steps(schedule, cost.steps)  # as the engine runs it at this step count
        frac = 1.0 if schedule is None else cost.fraction(schedule.effective_bits())
        out = {"compute_fraction": frac, "expected_speedup": 1.0 / frac, "cost_model": cost.source}
        # TMACs only from an analytic model; uniform unit counts are not MACs
        out["tmacs"] = cost.full * frac / 1e12 if cost.source == "macs" else None
        return out

    return facts


def run_evaluation(
    generate: Callable,
    schedules: Sequence[tuple[str, Schedule]],
    suite: MetricSuite,
    *,
    sample_prompts: Sequence[str | None],
    sample_seeds: Sequence[int] = (),
    cost: Callable[[Schedule | None], dict] | None = None,
    warmup: bool = True,
    kind: str = "image",
    settings: dict | None = None,
    progress: Progress | None = None,
    keep_outputs: int | None = None,
    on_outputs: Callable[[ScheduleResult], None] | None = None,
) -> EvaluationResult:
    """No cache first (the reference of every fidelity metric), then each ``(label, schedule)``.

    ``on_outputs(row)`` sees every row's outputs once they are scored (e.g. to save them);
    ``keep_outputs`` then trims each schedule row to its first outputs (enough for a grid), so
    that memory holds two sample sets at most, however many schedules are compared.
    """
    if not schedules:
        raise ValueError("nothing to evaluate: give at least one schedule")
    if kind not in ("image", "latent"):
        raise ValueError(f"kind must be 'image' or 'latent', got {kind!r}")
    rows: list[ScheduleResult] = []
    for label, schedule in [(NO_CACHE, None), *schedules]:
        if progress:
            progress(f"generating: {label}")
        if warmup and hasattr(generate, "warmup"):
            generate.warmup(schedule)
        t = time.perf_counter()
        outs = generate(schedule)
        secs = time.perf_counter() - t
        outs = [o.detach().float().cpu() for o in (list(outs) if isinstance(outs, torch.Tensor) else outs)]
        if rows and len(outs) != rows[0].samples:
            raise ValueError(
                f"{label}: generate returned {len(outs)} sample(s), but {rows[0].samples} without a "
                "cache; it must produce the same samples"
            )
        if len(outs) != len(sample_prompts):
            raise ValueError(f"{label}: {len(outs)} sample(s) but {len(sample_prompts)} sample prompt(s)")
        reuse = generate.reuse_fraction() if schedule is not None and hasattr(generate, "reuse_fraction") else None
        row = ScheduleResult(
            label, schedule, outs, secs, len(outs), cost(schedule) if cost else {}, 0.0 if schedule is None else reuse
        )
        if progress:
            progress(f"scoring: {label}")
        row.metrics, row.per_sample = suite.score(outs, rows[0].outputs if rows else None, sample_prompts, kind)  # type: ignore[arg-type]
        if on_outputs is not None:
            on_outputs(row)
        if keep_outputs is not None and schedule is not None:
            row.outputs = row.outputs[:keep_outputs]
        rows.append(row)
    base = rows[0].latency
    for r in rows:
        r.speedup = base / r.latency if r.latency > 0 else None
    return EvaluationResult(
        rows,
        suite.columns(kind),
        dict(suite.skipped),
        list(sample_prompts),
        list(sample_seeds),
        kind,
        dict(settings or {}),
    )
