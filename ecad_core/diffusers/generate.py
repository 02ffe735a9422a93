"""The search's and the evaluation's ``generate`` on a diffusers pipeline: every prompt x seed, same noise each call."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from ..engine import Step0Memo
from ..errors import SearchSettingsError
from ..schedule import Schedule
from .api import apply


class DiffusersGenerate:
    """``generate(schedule_or_None)`` on a diffusers pipeline: every prompt x seed, same noise each call.

    Outputs are ordered prompt by prompt, seed by seed (``sample_prompts[i]``
    is the prompt of output i). Each sample's initial noise comes from its own
    CPU generator seeded with its seed, so outputs do not depend on batching.
    Text embeddings of PixArt and FLUX pipelines are computed once and reused.
    ``last_stats`` holds the engine's RunStats of each pipeline call of the
    last cached run.

    ``step0_memo=True`` (a search's generate; off by default: evaluation and ``run`` time their runs or run
    once): the cached runs share their step-0 transformer calls through one ``Step0Memo``
    (``self.step0_memo``; ``ecad_core.engine.step0``): the first cached run of each batch computes and
    records them, later runs are served (the same outputs bit for bit, the same statistics). It holds one
    step-0 output per unit per pipeline call (every seed x prompt chunk, and each racing subset's chunks), on
    the model's device, for the life of this object.
    """

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
        output: str = "latent",
        extra_kwargs: dict | None = None,
        encode_once: bool = True,
        model_name: str | None = None,
        step0_memo: bool = False,
    ):
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
        self.step0_memo = Step0Memo.for_search(pipe.device) if step0_memo else None
        self._embeds: dict[tuple, dict] = {}
        self.encode_once = encode_once and (self.kind.startswith("PixArt") or self.kind.startswith("Flux"))
        params = inspect.signature(pipe.__call__).parameters
        self._base = {
            "num_inference_steps": steps,
            "guidance_scale": self.cfg,
            "height": height,
            "width": width,
            "output_type": "latent" if output == "latent" else "pt",
        }
        if "use_resolution_binning" in params:  # PixArt: generate exactly the asked size
            self._base["use_resolution_binning"] = False
        if "clean_caption" in params:  # PixArt: no bs4/ftfy caption cleaning
            self._base["clean_caption"] = False
        if self.kind.startswith("Flux") and "max_sequence_length" not in self.extra:
            tok = getattr(pipe, "tokenizer_2", None)
            self.extra["max_sequence_length"] = int(min(512, getattr(tok, "model_max_length", 512) or 512))
        self._base.update(self.extra)
        self.sample_prompts = [p for p in prompts for _ in self.seeds]
        self.description = {
            "pipeline": self.kind,
            "model": model_name,
            "prompts": prompts,
            "seeds": self.seeds,
            "steps": steps,
            "cfg": self.cfg,
            "height": height,
            "width": width,
            "output": output,
            "extra_kwargs": {k: repr(v) for k, v in sorted(self.extra.items())},
        }

    def _chunks(self):
        for i in range(0, len(self.prompts), self.batch_size):
            yield tuple(self.prompts[i : i + self.batch_size])

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
                    pe, pm, ne, nm = pipe.encode_prompt(
                        list(chunk),
                        do_classifier_free_guidance=self.cfg > 1.0,
                        negative_prompt="",
                        device=dev,
                        clean_caption=False,
                        **kw,
                    )
                    d = {"prompt_embeds": pe, "prompt_attention_mask": pm, "negative_prompt": None}
                    if self.cfg > 1.0:
                        d.update(negative_prompt_embeds=ne, negative_prompt_attention_mask=nm)
                else:
                    pe, pooled, _ = pipe.encode_prompt(
                        list(chunk), prompt_2=None, device=dev, max_sequence_length=self.extra["max_sequence_length"]
                    )
                    d = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
            self._embeds[chunk] = d
        return dict(self._embeds[chunk])

    def __call__(self, schedule: Schedule | None) -> list[torch.Tensor]:
        handle = apply(self.pipe, schedule, step0_memo=self.step0_memo) if schedule is not None else None
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
        return [
            results[(ci, i, seed)] for ci, chunk in enumerate(chunks) for i in range(len(chunk)) for seed in self.seeds
        ]


def diffusers_generate_fn(
    pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, cfg: float, height: int, width: int, **kw
) -> DiffusersGenerate:
    """A ``generate`` function for ``LocalEvaluator`` on a diffusers pipeline (see ``DiffusersGenerate``)."""
    return DiffusersGenerate(pipe, prompts, seeds, steps, cfg, height, width, **kw)
