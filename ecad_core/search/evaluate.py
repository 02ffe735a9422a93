"""The evaluation seam: how the search scores schedules.

The search talks to an ``Evaluator``: ``evaluate(schedules) -> losses`` (one
quality loss per schedule, in order; lower is better). Everything about
models, prompts and devices lives behind it, so a ComfyUI node (its own
``generate``), this module's diffusers helper, or a distributed (Ray) backend
can all drive the same search.

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
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from ..metrics import FIDELITY_SPACES, IMAGE_SPACES, LEARNED_METRICS, fidelity_loss, score_drop
from ..schedule import Schedule
from .errors import EvaluationError, SearchSettingsError

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

    def __init__(self, generate: GenerateFn, decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 space: str = "latent", *, metric=None, prompts: Sequence[str] | None = None,
                 batch_size: int | None = 1, description: dict | None = None):
        if not callable(generate):
            raise TypeError("generate must be callable: generate(schedule_or_None) -> list of tensors")
        if space not in FIDELITY_SPACES + LEARNED_METRICS:
            raise SearchSettingsError(f"unknown quality metric {space!r}; known: "
                                      f"{', '.join(FIDELITY_SPACES + LEARNED_METRICS)}")
        if space in LEARNED_METRICS:
            if metric is None:
                raise SearchSettingsError(f"metric {space!r} needs a loaded metric "
                                          "(ecad_core.metrics.load_metric)")
            prompts = prompts if prompts is not None else getattr(generate, "sample_prompts", None)
            if not prompts:
                raise SearchSettingsError(f"metric {space!r} needs the prompt of every sample")
        self.generate = generate
        self.decode = decode
        self.space = space
        self.metric = metric
        self.prompts = list(prompts) if prompts is not None else None
        self.batch_size = batch_size
        self.description = dict(description if description is not None else
                                getattr(generate, "description", {}) or {})
        self.n_generate = 0              # generate() calls, references included
        self.seconds_generating = 0.0
        self._refs: list[torch.Tensor] | None = None
        self._ref_scores: torch.Tensor | None = None
        self._ref_path: Path | None = None
        self._fingerprint: str | None = None

    # -- protocol extras ---------------------------------------------------------
    def describe(self) -> dict:
        return {"evaluator": "local", "metric": self.space, **self.description}

    def prepare(self, out_dir: str | Path | None, fingerprint: str | None = None,
                progress: Progress | None = None) -> None:
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
            self._ref_scores = self.metric.score(torch.stack([o if o.ndim == 3 else o[0] for o in outs]),
                                                 self.prompts)
        if self._ref_path is not None:
            self._ref_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._ref_path.with_suffix(".tmp")
            torch.save({"fingerprint": self._fingerprint, "space": self.space, "outputs": outs,
                        "scores": self._ref_scores}, tmp)
            tmp.replace(self._ref_path)
        if progress:
            progress("reference", 1, 1)
        return outs

    # -- evaluation --------------------------------------------------------------
    def evaluate(self, schedules: list[Schedule]) -> list[float]:
        refs = self.references()
        losses = []
        for s in schedules:
            outs = self._comparable(self._run(s))
            if len(outs) != len(refs):
                raise EvaluationError(f"generate returned {len(outs)} output(s) for schedule {s.name!r} but "
                                      f"{len(refs)} for full compute; it must produce the same samples")
            if self.space in LEARNED_METRICS:
                loss = score_drop(self.metric, outs, self.prompts, self._ref_scores)
            else:
                loss = fidelity_loss(outs, refs, self.space)
            losses.append(loss if math.isfinite(loss) else math.inf)
        return losses

    def _run(self, schedule):
        t = time.perf_counter()
        outs = self.generate(schedule)
        self.seconds_generating += time.perf_counter() - t
        self.n_generate += 1
        if isinstance(outs, torch.Tensor):
            outs = list(outs)
        return [o.detach().float().cpu() for o in outs]

    def _comparable(self, outs):
        needs_image = self.space in IMAGE_SPACES or self.space in LEARNED_METRICS
        if needs_image and self.decode is not None:
            outs = [self.decode(o).detach().float().cpu() for o in outs]
        return outs

    def _check_prompts(self, n):
        if len(self.prompts) != n:
            raise SearchSettingsError(f"{n} calibration sample(s) but {len(self.prompts)} prompt(s) given to "
                                      "the learned metric")


# -- diffusers ---------------------------------------------------------------------
class DiffusersGenerate:
    """``generate(schedule_or_None)`` on a diffusers pipeline: every prompt x seed, same noise each call.

    Outputs are ordered prompt by prompt, seed by seed (``sample_prompts[i]``
    is the prompt of output i). Each sample's initial noise comes from its own
    CPU generator seeded with its seed, so outputs do not depend on batching.
    Text embeddings of PixArt and FLUX pipelines are computed once and reused.
    ``last_stats`` holds the engine's RunStats of each pipeline call of the
    last cached run.
    """

    def __init__(self, pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, cfg: float,
                 height: int, width: int, *, batch_size: int | None = None, output: str = "latent",
                 extra_kwargs: dict | None = None, encode_once: bool = True, model_name: str | None = None):
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise SearchSettingsError("no calibration prompts: give at least one prompt")
        if not seeds:
            raise SearchSettingsError("no seeds: give at least one seed per prompt")
        for what, v in (("steps", steps), ("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SearchSettingsError(f"{what} must be a positive integer, got {v!r}")
        if output not in ("latent", "image"):
            raise SearchSettingsError(f"output must be 'latent' or 'image', got {output!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise SearchSettingsError(f"batch size must be a positive integer, got {batch_size!r}")
        self.pipe = pipe
        self.prompts = prompts
        self.seeds = [int(s) for s in seeds]
        self.steps, self.cfg, self.height, self.width = steps, float(cfg), height, width
        self.batch_size = batch_size or len(prompts)
        self.output = output
        self.extra = dict(extra_kwargs or {})
        self.kind = type(pipe).__name__
        self.calls = 0
        self.last_stats: list = []
        self._embeds: dict[tuple, dict] = {}
        self.encode_once = encode_once and (self.kind.startswith("PixArt") or self.kind.startswith("Flux"))
        params = inspect.signature(pipe.__call__).parameters
        self._base = {"num_inference_steps": steps, "guidance_scale": self.cfg, "height": height, "width": width,
                      "output_type": "latent" if output == "latent" else "pt"}
        if "use_resolution_binning" in params:   # PixArt: generate exactly the asked size
            self._base["use_resolution_binning"] = False
        if "clean_caption" in params:            # PixArt: no bs4/ftfy caption cleaning
            self._base["clean_caption"] = False
        if self.kind.startswith("Flux") and "max_sequence_length" not in self.extra:
            tok = getattr(pipe, "tokenizer_2", None)
            self.extra["max_sequence_length"] = int(min(512, getattr(tok, "model_max_length", 512) or 512))
        self._base.update(self.extra)
        self.sample_prompts = [p for p in prompts for _ in self.seeds]
        self.description = {"pipeline": self.kind, "model": model_name, "prompts": prompts, "seeds": self.seeds,
                            "steps": steps, "cfg": self.cfg, "height": height, "width": width, "output": output,
                            "extra_kwargs": {k: repr(v) for k, v in sorted(self.extra.items())}}

    def _chunks(self):
        for i in range(0, len(self.prompts), self.batch_size):
            yield tuple(self.prompts[i:i + self.batch_size])

    def _text_kwargs(self, chunk: tuple) -> dict:
        if not self.encode_once:
            return {"prompt": list(chunk)}
        if chunk not in self._embeds:
            pipe = self.pipe
            dev = getattr(pipe, "_execution_device", None)
            with torch.no_grad():
                if self.kind.startswith("PixArt"):
                    kw = {}
                    if "max_sequence_length" in self.extra:
                        kw["max_sequence_length"] = self.extra["max_sequence_length"]
                    pe, pm, ne, nm = pipe.encode_prompt(list(chunk), do_classifier_free_guidance=self.cfg > 1.0,
                                                        negative_prompt="", device=dev, clean_caption=False, **kw)
                    d = {"prompt_embeds": pe, "prompt_attention_mask": pm, "negative_prompt": None}
                    if self.cfg > 1.0:
                        d.update(negative_prompt_embeds=ne, negative_prompt_attention_mask=nm)
                else:
                    pe, pooled, _ = pipe.encode_prompt(list(chunk), prompt_2=None, device=dev,
                                                       max_sequence_length=self.extra["max_sequence_length"])
                    d = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
            self._embeds[chunk] = d
        return dict(self._embeds[chunk])

    def __call__(self, schedule: Schedule | None) -> list[torch.Tensor]:
        from ..diffusers_api import apply

        handle = apply(self.pipe, schedule) if schedule is not None else None
        results: dict[tuple[int, int, int], torch.Tensor] = {}
        chunks = list(self._chunks())
        stats = []
        try:
            for seed in self.seeds:
                for ci, chunk in enumerate(chunks):
                    gens = [torch.Generator("cpu").manual_seed(seed) for _ in chunk]
                    kw = dict(self._base, **self._text_kwargs(chunk), generator=gens)
                    with torch.no_grad():
                        images = self.pipe(**kw).images
                    self.calls += 1
                    if handle is not None:
                        stats.append(handle.finish_run())
                    for i in range(len(chunk)):
                        results[(ci, i, seed)] = images[i].detach().float().cpu()
        finally:
            if handle is not None:
                handle.remove()
        if handle is not None:
            self.last_stats = stats
        # prompt-major, then seed: output k belongs to sample_prompts[k]
        return [results[(ci, i, seed)] for ci, chunk in enumerate(chunks) for i in range(len(chunk))
                for seed in self.seeds]


def diffusers_generate_fn(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, cfg: float,
                          height: int, width: int, **kw) -> DiffusersGenerate:
    """A ``generate`` function for ``LocalEvaluator`` on a diffusers pipeline (see ``DiffusersGenerate``)."""
    return DiffusersGenerate(pipe, prompts, seeds, steps, cfg, height, width, **kw)
