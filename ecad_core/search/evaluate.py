"""The evaluation seam: how the search scores schedules.

The search talks to an ``Evaluator``: ``evaluate(schedules) -> losses`` (one
quality loss per schedule, in order; lower is better). Everything about
models, prompts and devices lives behind it, so a ComfyUI node (its own
``generate``), the diffusers driver (``ecad_core.diffusers.generate``), or a
distributed (Ray) backend can all drive the same search.

Optional parts of the protocol, used when present:

* ``batch_size``: how many schedules the search hands over per call (``None``:
  all new schedules of a generation at once, best for a parallel backend). The
  search checks for cancellation and reports progress between calls.
* ``prepare(out_dir, fingerprint, progress)``: called once before the first
  generation, with the search's output folder (for state such as reference
  outputs that must survive a resume) and a fingerprint of the settings.
* ``describe() -> dict``: JSON-able facts (model, prompts, seeds, metric) kept
  in the checkpoint and in the provenance of found schedules; a resume with a
  different description is refused.
* ``n_samples`` and ``evaluate_samples(schedules, indices) -> per-sample losses``:
  scoring on a subset of the calibration samples, which racing (``racing.py``)
  needs; ``n_images`` counts the samples sampled.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import EvaluationError, SearchSettingsError
from ..metrics import FIDELITY_SPACES, IMAGE_SPACES, LEARNED_METRICS, per_sample_loss, score_drop
from ..schedule import Schedule

log = logging.getLogger("ecad.search")

Progress = Callable[[str, int, int], None]
GenerateFn = Callable[[Schedule | None], Sequence[torch.Tensor]]
REFERENCE_FILE = "references.pt"


@runtime_checkable
class Evaluator(Protocol):
    def evaluate(self, schedules: list[Schedule]) -> list[float]:
        """Quality loss of each schedule, in order (lower is better; 0 = same as full compute)."""
        ...


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LocalEvaluator:
    """Scores schedules in this process: outputs vs the full-compute outputs of the same prompts/seeds.

    ``generate(schedule)`` returns the outputs (one tensor per calibration
    sample: prompts x seeds) of a sampling run with ``schedule`` applied;
    ``generate(None)`` runs full compute and gives the references, computed once
    (and saved as ``references.pt`` in the search folder so a resume does not
    recompute them). ``decode`` (optional) turns an output into an image
    [3, H, W] in [0, 1], needed for the image spaces when ``generate`` returns
    latents. ``space``: ``latent`` (default), ``ssim``, ``image-mse``, or a
    learned metric (``clip``, ``imagereward``: pass ``metric`` from
    ``ecad_core.metrics.load_metric`` and ``prompts``, one per sample).
    """

    def __init__(
        self,
        generate: GenerateFn,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        space: str = "latent",
        *,
        metric=None,
        prompts: Sequence[str] | None = None,
        batch_size: int | None = 1,
        description: dict | None = None,
    ):
        if not callable(generate):
            raise TypeError("generate must be callable: generate(schedule_or_None) -> list of tensors")
        if space not in FIDELITY_SPACES + LEARNED_METRICS:
            raise SearchSettingsError(
                f"unknown quality metric {space!r}; known: {', '.join(FIDELITY_SPACES + LEARNED_METRICS)}"
            )
        if space in LEARNED_METRICS:
            if metric is None:
                raise SearchSettingsError(f"metric {space!r} needs a loaded metric (ecad_core.metrics.load_metric)")
            prompts = prompts if prompts is not None else getattr(generate, "sample_prompts", None)
            if not prompts:
                raise SearchSettingsError(f"metric {space!r} needs the prompt of every sample")
        self.generate = generate
        self.decode = decode
        self.space = space
        self.metric = metric
        self.prompts = list(prompts) if prompts is not None else None
        self.batch_size = batch_size
        self.description = dict(description if description is not None else getattr(generate, "description", {}) or {})
        self.n_generate = 0  # generate() calls, references included
        self.n_images = 0  # calibration samples sampled (one per output of generate), references included
        self._spare: dict[bytes, list[float]] = {}
        # per schedule of the last evaluate() call, each sample's loss (their mean is the schedule's loss): what a
        # racing scheme over prompts needs; None for a learned metric (its loss is a difference of means)
        self.last_sample_losses: list[list[float] | None] = []
        self.seconds_generating = 0.0
        self._refs: list[torch.Tensor] | None = None
        self._ref_scores: torch.Tensor | None = None
        self._ref_path: Path | None = None
        self._fingerprint: str | None = None

    # -- protocol extras ---------------------------------------------------------
    def describe(self) -> dict:
        return {"evaluator": "local", "metric": self.space, **self.description}

    def prepare(
        self, out_dir: str | Path | None, fingerprint: str | None = None, progress: Progress | None = None
    ) -> None:
        self._ref_path = Path(out_dir) / REFERENCE_FILE if out_dir is not None else None
        self._fingerprint = fingerprint
        self.references(progress)

    # -- references --------------------------------------------------------------
    def references(self, progress: Progress | None = None) -> list[torch.Tensor]:
        """The full-compute outputs (comparison-ready: decoded for image spaces), computed once."""
        if self._refs is not None:
            return self._refs
        if self._ref_path is not None and self._ref_path.is_file():
            try:
                d = torch.load(self._ref_path, map_location="cpu", weights_only=True)
                if d.get("fingerprint") == self._fingerprint and d.get("space") == self.space:
                    self._refs = list(d["outputs"])
                    self._ref_scores = d.get("scores")
                    log.info("ECAD search: reference outputs loaded from %s", self._ref_path)
                    return self._refs
                log.warning("ECAD search: %s belongs to other settings; recomputing", self._ref_path)
            except Exception as e:  # noqa: BLE001 - a broken cache file is recomputed
                log.warning("ECAD search: cannot read %s (%s); recomputing", self._ref_path, e)
        if progress:
            progress("reference", 0, 1)
        outs = self._comparable(self._run(None))
        if not outs:
            raise EvaluationError("generate(None) returned no outputs (no prompts?)")
        self._refs = outs
        if self.space in LEARNED_METRICS:
            self._check_prompts(len(outs))
            self._ref_scores = self.metric.score(torch.stack([o if o.ndim == 3 else o[0] for o in outs]), self.prompts)
        if self._ref_path is not None:
            self._ref_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._ref_path.with_suffix(".tmp")
            torch.save(
                {"fingerprint": self._fingerprint, "space": self.space, "outputs": outs, "scores": self._ref_scores},
                tmp,
            )
            tmp.replace(self._ref_path)
        if progress:
            progress("reference", 1, 1)
        return outs

    # -- evaluation --------------------------------------------------------------
    def evaluate(self, schedules: list[Schedule]) -> list[float]:
        refs = self.references()
        losses = []
        self.last_sample_losses = []
        for s in schedules:
            outs = self._comparable(self._run(s))
            if len(outs) != len(refs):
                raise EvaluationError(
                    f"generate returned {len(outs)} output(s) for schedule {s.name!r} but "
                    f"{len(refs)} for full compute; it must produce the same samples"
                )
            if self.space in LEARNED_METRICS:
                # a learned metric has its prompts and reference scores (checked in __init__ / references())
                loss = score_drop(self.metric, outs, self.prompts or [], typing.cast(torch.Tensor, self._ref_scores))
                self.last_sample_losses.append(None)
            else:
                per = per_sample_loss(outs, refs, self.space)
                loss = float(per.mean())  # as fidelity_loss
                self.last_sample_losses.append([float(v) for v in per])
            losses.append(loss if math.isfinite(loss) else math.inf)
        return losses

    @property
    def n_samples(self) -> int:
        return len(self.references())

    def evaluate_samples(self, schedules: list[Schedule], indices: Sequence[int]) -> list[list[float]]:
        """Each schedule's losses on the calibration samples ``indices`` (in that order). Runs only those samples
        when ``generate`` takes ``samples=``; otherwise runs all of them once and answers later subsets of the same
        schedule from that run."""
        if self.space in LEARNED_METRICS:
            raise SearchSettingsError(f"metric {self.space!r} has no per-sample losses: racing needs a fidelity space")
        refs = self.references()
        idx = [int(i) for i in indices]
        if not idx or any(not 0 <= i < len(refs) for i in idx):
            raise SearchSettingsError(f"sample indices must be in 0..{len(refs) - 1}, got {idx}")
        out = []
        for s in schedules:
            key = np.packbits(s.bits).tobytes() + str(s.bits.shape).encode()
            if _takes_samples(self.generate):
                outs = self._comparable(self._run(s, idx))
                if len(outs) != len(idx):
                    raise EvaluationError(
                        f"generate returned {len(outs)} output(s) for {len(idx)} sample(s) of schedule {s.name!r}"
                    )
                per = [float(v) for v in per_sample_loss(outs, [refs[i] for i in idx], self.space)]
            else:
                if key not in self._spare:
                    if len(self._spare) > 256:
                        self._spare.clear()
                    self._spare[key] = self.evaluate_per_sample(s)
                per = [self._spare[key][i] for i in idx]
            out.append([v if math.isfinite(v) else math.inf for v in per])
        return out

    def evaluate_per_sample(self, schedule: Schedule) -> list[float]:
        refs = self.references()
        outs = self._comparable(self._run(schedule))
        if len(outs) != len(refs):
            raise EvaluationError(
                f"generate returned {len(outs)} output(s) for schedule {schedule.name!r} but "
                f"{len(refs)} for full compute; it must produce the same samples"
            )
        return [float(v) for v in per_sample_loss(outs, refs, self.space)]

    def _run(self, schedule, samples: list[int] | None = None):
        t = time.perf_counter()
        gen: Any = self.generate  # takes samples= when _takes_samples
        outs = gen(schedule) if samples is None else gen(schedule, samples=samples)
        self.seconds_generating += time.perf_counter() - t
        self.n_generate += 1
        if isinstance(outs, torch.Tensor):
            outs = list(outs)
        self.n_images += len(outs)
        return [o.detach().float().cpu() for o in outs]

    def _comparable(self, outs):
        needs_image = self.space in IMAGE_SPACES or self.space in LEARNED_METRICS
        if needs_image and self.decode is not None:
            outs = [self.decode(o).detach().float().cpu() for o in outs]
        return outs

    def _check_prompts(self, n):
        if len(self.prompts) != n:
            raise SearchSettingsError(
                f"{n} calibration sample(s) but {len(self.prompts)} prompt(s) given to the learned metric"
            )


def _takes_samples(generate) -> bool:
    """Whether ``generate(schedule, samples=[i, ...])`` runs only those samples (checked at each call: a caller
    may swap ``generate``). Without it a subset costs a full run whose other losses are kept for the rest."""
    try:
        return "samples" in inspect.signature(generate).parameters
    except (TypeError, ValueError):
        return False
