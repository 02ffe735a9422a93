"""The evaluation's ``generate`` for a diffusers pipeline: images of every prompt x seed, timed as a whole.

Built on the search's ``DiffusersGenerate`` (same seeding, prompt embeddings
computed once, ``ecad_core.apply`` for the schedule), so an evaluated schedule
runs exactly as it ran when it was searched. Also gives the analytic cost of
a schedule on this pipeline's transformer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..evaluation.runner import cost_function
from .generate import DiffusersGenerate


class DiffusersImages:
    """``generate(schedule_or_None)`` -> images [3, H, W] in [0, 1], prompt-major then seed."""

    def __init__(
        self,
        pipe,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        cfg: float,
        height: int,
        width: int,
        *,
        batch_size: int | None = None,
        model_name: str | None = None,
    ):
        kw: dict[str, Any] = dict(output="image", batch_size=batch_size, model_name=model_name)
        self.gen = DiffusersGenerate(pipe, prompts, seeds, steps, cfg, height, width, **kw)
        # warm-up: the first prompt and seed only (loads, allocates and installs hooks untimed)
        self._warm = DiffusersGenerate(pipe, list(prompts)[:1], list(seeds)[:1], steps, cfg, height, width, **kw)
        self.sample_prompts = self.gen.sample_prompts
        self.sample_seeds = [s for _ in self.gen.prompts for s in self.gen.seeds]
        self.description = self.gen.description

    def __call__(self, schedule):
        return self.gen(schedule)

    def warmup(self, schedule) -> None:
        self._warm(schedule)

    def reuse_fraction(self) -> float | None:
        stats = self.gen.last_stats
        reused = sum(s.total_reused for s in stats)
        total = reused + sum(s.total_computed for s in stats)
        return reused / total if total else None


def pipeline_cost(pipe, steps: int, height: int, width: int, mode: str = "ecad"):
    """``cost(schedule_or_None) -> dict`` for the runner: analytic MACs of the pipeline's transformer at
    this size when ``ecad_core.costs`` knows it, else recompute counts (``cost_model`` says which)."""
    from ..costs import cost_for_transformer
    from .adapters import find_diffusers_units
    from .pipelines import text_tokens

    layout = find_diffusers_units(pipe.transformer).layout
    tokens = text_tokens(pipe)  # the pipeline's own prompt length (PixArt-Σ: 300), else the model's default
    return cost_function(
        cost_for_transformer(pipe.transformer, layout, steps, height, width, text_tokens=tokens, mode=mode)
    ), layout
