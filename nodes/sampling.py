"""Sampling a ComfyUI MODEL for the Evolve and Evaluate nodes: one ``generate(schedule)`` driver (``Sampler``),
text encoding of prompt lines and the zero conditioning that stands in for a missing negative.

``Sampler(model, settings, samples)(schedule)`` samples every (positive, negative, seed) with ComfyUI's own
sampler (``comfy.sample.sample``, as the KSampler node runs it: empty latent, the seed's noise, denoise 1), with
``schedule`` applied by ``patch_model`` (None: the model as it is, full compute), and returns one output per
sample: the latent, or what ``decode`` makes of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..ecad_core.schedule import Schedule
from .patching import patch_model


@dataclass(frozen=True)
class SamplerSettings:
    """The KSampler settings both nodes take (same input names; their inputs dataclasses extend this)."""

    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    width: int
    height: int


def sampler_inputs(size: int, max_steps: int) -> dict:
    """The widgets of those settings, in the order both nodes show them."""
    import comfy.samplers

    return {
        "steps": ("INT", {"default": 20, "min": 1, "max": max_steps}),
        "cfg": ("FLOAT", {"default": 4.5, "min": 0.0, "max": 100.0, "step": 0.1}),
        "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
        "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
        "width": ("INT", {"default": size, "min": 16, "max": 8192, "step": 16}),
        "height": ("INT", {"default": size, "min": 16, "max": 8192, "step": 16}),
    }


@dataclass(frozen=True)
class Sample:
    positive: Any  # CONDITIONING
    negative: Any
    seed: int


def latent_ratio(model) -> int:
    """Pixels per latent pixel of ``model``'s latent format."""
    return int(getattr(model.get_model_object("latent_format"), "spacial_downscale_ratio", 8))


class Sampler:
    """``generate(schedule_or_None) -> [output per sample]`` on a ComfyUI MODEL.

    ``decode(samples)``: the output of a sampled latent batch (default: the latent, float on the CPU).
    ``preview``: step previews and the progress bar as the KSampler node shows them. ``on_sample()``: called
    after each sample. The patched clone of the last schedule is kept (a warm-up and the timed run share it).
    """

    def __init__(
        self,
        model,
        settings: SamplerSettings,
        samples: list[Sample],
        *,
        offload: bool = False,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        preview: bool = False,
        on_sample: Callable[[], None] | None = None,
    ):
        self.model, self.settings, self.samples = model, settings, list(samples)
        self.offload, self.decode, self.preview, self.on_sample = offload, decode, preview, on_sample
        fmt = model.get_model_object("latent_format")
        ratio = latent_ratio(model)
        self.latent_shape = (1, int(fmt.latent_channels), settings.height // ratio, settings.width // ratio)
        self.description: dict = {}  # what the outputs depend on (the search's resume key, when searching)
        self._patched: tuple[Schedule, Any] | None = None
        self._last_run: list[dict] | None = None

    def model_for(self, schedule: Schedule | None):
        if schedule is None:
            return self.model
        if self._patched is None or self._patched[0] is not schedule:
            self._patched = (schedule, patch_model(self.model, schedule, self.offload))
        return self._patched[1]

    def sample(self, model, s: Sample) -> torch.Tensor:
        import comfy.sample
        import comfy.utils

        st = self.settings
        latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(self.latent_shape))
        noise = comfy.sample.prepare_noise(latent, s.seed)
        callback = None
        if self.preview:
            import latent_preview

            callback = latent_preview.prepare_callback(model, st.steps)
        samples = comfy.sample.sample(
            model,
            noise,
            st.steps,
            st.cfg,
            st.sampler_name,
            st.scheduler,
            s.positive,
            s.negative,
            latent,
            denoise=1.0,
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED if self.preview else True,
            seed=s.seed,
        )
        return samples[0].float().cpu() if self.decode is None else self.decode(samples)

    def warmup(self, schedule: Schedule | None) -> None:
        self.sample(self.model_for(schedule), self.samples[0])

    def __call__(self, schedule: Schedule | None) -> list[torch.Tensor]:
        model = self.model_for(schedule)
        run = model.model_options.get("transformer_options", {}).get("ecad") if schedule is not None else None
        start = len(run.history) if run is not None else 0
        outs = []
        for s in self.samples:
            outs.append(self.sample(model, s))
            if self.on_sample is not None:
                self.on_sample()
        self._last_run = run.history[start:] if run is not None else None
        return outs

    def reuse_fraction(self) -> float | None:
        """The share of unit calls the last scheduled call served from the cache."""
        if not self._last_run:
            return None
        reused = sum(e["reused"] for e in self._last_run)
        total = reused + sum(e["computed"] for e in self._last_run)
        return reused / total if total else None


def prompt_lines(text: str, comments: bool = False) -> list[str]:
    """The non-empty lines of ``text``, stripped (``comments``: lines starting with ``#`` left out too)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return [ln for ln in lines if not ln.startswith("#")] if comments else lines


def encode(clip, text: str):
    """CONDITIONING of ``text``, as ComfyUI's CLIP Text Encode node makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def zero_conditioning(cond):
    """What ComfyUI's ConditioningZeroOut gives: the empty prompt for models without a negative."""
    out = []
    for t, extra in cond:
        extra = dict(extra)
        if isinstance(extra.get("pooled_output"), torch.Tensor):
            extra["pooled_output"] = torch.zeros_like(extra["pooled_output"])
        out.append([torch.zeros_like(t), extra])
    return out
