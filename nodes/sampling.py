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

from ..ecad_core.engine import Step0Memo
from ..ecad_core.schedule import Schedule
from ..ecad_core.schedule.remap import Slice, embed_stage
from .adapters import is_ecad_patch
from .patching import WRAPPER_KEY, patch_model

STEP0_KEY = "ecad_step0"  # the key of the step-0 memo's APPLY_MODEL wrapper (inside ECAD's own, added after it)


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
    fmt = model.get_model_object("latent_format")
    ratio = getattr(fmt, "spacial_downscale_ratio", None)
    if ratio is None and type(fmt).__name__ == "Flux2":
        return 16  # ComfyUI 0.3.75's FLUX.2 format does not say it; its VAE and EmptyFlux2LatentImage are 1/16
    return int(ratio or 8)


class Sampler:
    """``generate(schedule_or_None) -> [output per sample]`` on a ComfyUI MODEL.

    ``decode(samples)``: the output of a sampled latent batch (default: the latent, float on the CPU).
    ``preview``: step previews and the progress bar as the KSampler node shows them. ``on_sample()``: called
    after each sample. The patched clone of the last schedule is kept (a warm-up and the timed run share it).
    ``batch_size``: up to this many samples per sampler call (``batch_groups`` says which go together), each
    with its own seed's noise, as the CLI batches; 1 runs them one by one.
    ``stage``: the model runs only these steps of the trajectory (KSamplerAdvanced stages, as Wan 2.2's two
    experts run), ``other`` the steps before and after it, uncached; the schedules given have one row per stage
    step and are applied as the whole trajectory's (``embed_stage``). The steps before the stage are the same
    for every schedule: they run once per sample group (``other_runs`` counts ``other``'s sampler calls).
    ``step0_memo=True`` (a search's generate; off by default, Evaluate times its runs): the scheduled runs share
    their step-0 model calls through one ``Step0Memo`` (``ecad_core.engine.step0``; ``self.step0_memo``, which
    may also be set after construction): one step-0 output per unit per sampler call's model call is kept for
    the life of this object, and later runs with exactly the same step-0 inputs skip the model there.
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
        batch_size: int = 1,
        stage: Slice | None = None,
        other=None,
        step0_memo: bool = False,
    ):
        self.model, self.settings, self.samples = model, settings, list(samples)
        device = getattr(model, "load_device", "cpu")
        self.step0_memo: Step0Memo | None = Step0Memo.for_search(device) if step0_memo else None
        self.batch_size = max(1, int(batch_size))
        self.offload, self.decode, self.preview, self.on_sample = offload, decode, preview, on_sample
        fmt = model.get_model_object("latent_format")
        ratio = latent_ratio(model)
        self.latent_shape = (1, int(fmt.latent_channels), settings.height // ratio, settings.width // ratio)
        self.description: dict = {}  # what the outputs depend on (the search's resume key, when searching)
        self._patched: tuple[Schedule, Any] | None = None
        self._last_run: list[dict] | None = None
        self.stage, self.other = stage, other
        self.other_runs = 0
        self._before: dict[tuple, torch.Tensor] = {}  # the other expert's latents where the stage starts

    def model_for(self, schedule: Schedule | None):
        if schedule is None:
            return self.model
        if self._patched is None or self._patched[0] is not schedule:
            whole = schedule if self.stage is None else embed_stage(schedule, self.stage)
            m = patch_model(self.model, whole, self.offload)
            if self.step0_memo is not None:
                import comfy.patcher_extension as pe

                m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, STEP0_KEY, step0_wrapper(self.step0_memo))
            self._patched = (schedule, m)
        return self._patched[1]

    def sample(self, model, s: Sample) -> torch.Tensor:
        return self.sample_batch(model, [s])[0]

    def sample_batch(self, model, batch: list[Sample]) -> list[torch.Tensor]:
        """One sampler call for ``batch`` (conditionings that ``batch_groups`` joined): one output per sample."""
        import comfy.sample
        import comfy.utils

        if self.stage is not None:
            return self._sample_staged(model, batch)
        st = self.settings
        one = comfy.sample.fix_empty_latent_channels(model, torch.zeros(self.latent_shape))
        # each sample's own seed noise, as a batch-1 KSampler run draws it
        noise = torch.cat([comfy.sample.prepare_noise(one, s.seed) for s in batch])
        latent = one.repeat(len(batch), *([1] * (one.ndim - 1)))
        s = batch[0]
        positive = s.positive if len(batch) == 1 else _join([b.positive for b in batch])
        negative = s.negative if len(batch) == 1 else _join([b.negative for b in batch])
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
            positive,
            negative,
            latent,
            denoise=1.0,
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED if self.preview else True,
            seed=s.seed,
        )
        if self.decode is None:
            return list(samples.float().cpu())
        return [self.decode(samples[i : i + 1]) for i in range(len(batch))]

    def _sample_staged(self, model, batch: list[Sample]) -> list[torch.Tensor]:
        """``batch`` as two KSamplerAdvanced stages run it: the other expert's steps before the stage (once per
        batch: the same for every schedule), the stage on ``model``, the other expert's steps after it."""
        import comfy.sample

        st, sl = self.settings, self.stage
        assert sl is not None and self.other is not None
        a, b, n = sl.start, sl.start + sl.steps, sl.full
        s = batch[0]
        positive = s.positive if len(batch) == 1 else _join([b_.positive for b_ in batch])
        negative = s.negative if len(batch) == 1 else _join([b_.negative for b_ in batch])
        one = comfy.sample.fix_empty_latent_channels(model, torch.zeros(self.latent_shape))
        noise = torch.cat([comfy.sample.prepare_noise(one, x.seed) for x in batch])
        empty = one.repeat(len(batch), *([1] * (one.ndim - 1)))

        def run(m, latent, first: int, last: int, add_noise: bool):
            # KSamplerAdvanced: noise added only by the first stage, leftover noise kept until the last step
            return comfy.sample.sample(
                m,
                noise if add_noise else torch.zeros_like(noise),
                n,
                st.cfg,
                st.sampler_name,
                st.scheduler,
                positive,
                negative,
                latent,
                disable_noise=not add_noise,
                start_step=first,
                last_step=last,
                force_full_denoise=last >= n,
                disable_pbar=True,
                seed=s.seed,
            )

        if a > 0:
            key = tuple((id(x.positive), id(x.negative), x.seed) for x in batch)
            if key not in self._before:
                self._before[key] = run(self.other, empty, 0, a, True)
                self.other_runs += 1
            latent = run(model, self._before[key].clone(), a, b, False)
        else:
            latent = run(model, empty, 0, b, True)
        if b < n:
            latent = run(self.other, latent, b, n, False)
            self.other_runs += 1
        if self.decode is None:
            return list(latent.float().cpu())
        return [self.decode(latent[i : i + 1]) for i in range(len(batch))]

    def warmup(self, schedule: Schedule | None) -> None:
        self.sample(self.model_for(schedule), self.samples[0])

    def __call__(self, schedule: Schedule | None) -> list[torch.Tensor]:
        model = self.model_for(schedule)
        run = model.model_options.get("transformer_options", {}).get("ecad") if schedule is not None else None
        start = len(run.history) if run is not None else 0
        outs = []
        for group in self.batch_groups():
            outs += self.sample_batch(model, [self.samples[i] for i in group])
            for _ in group:
                if self.on_sample is not None:
                    self.on_sample()
        self._last_run = run.history[start:] if run is not None else None
        return outs

    def batch_groups(self) -> list[list[int]]:
        """Indices of the samples sampled together: consecutive samples whose conditionings can be stacked
        (one entry each, the same tensor shapes and plain settings), at most ``batch_size``; always the same
        groups, so the reference and every candidate run alike."""
        groups: list[list[int]] = []
        prev = None
        for i, s in enumerate(self.samples):
            sig = (_cond_sig(s.positive), _cond_sig(s.negative))
            if groups and None not in sig and sig == prev and len(groups[-1]) < self.batch_size:
                groups[-1].append(i)
            else:
                groups.append([i])
            prev = sig
        return groups

    def reuse_fraction(self) -> float | None:
        """The share of unit calls the last scheduled call served from the cache."""
        if not self._last_run:
            return None
        reused = sum(e["reused"] for e in self._last_run)
        total = reused + sum(e["computed"] for e in self._last_run)
        return reused / total if total else None


def step0_wrapper(memo: Step0Memo):
    """An APPLY_MODEL wrapper that routes step-0 model calls through ``memo``. Added after ECAD's own wrapper, so
    it runs inside it: the run's engine already knows the call's step and branch."""

    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, *a, **kw):
        def compute():
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, *a, **kw)

        eng = getattr((transformer_options or {}).get("ecad"), "engine", None)
        if eng is None or not memo.usable(eng):  # every step but 0: no inputs to gather
            return compute()
        inputs = (x, t, c_concat, c_crossattn, control, a, kw, _step0_options(transformer_options or {}))
        return memo.call(eng, compute, inputs)

    return wrapper


def _step0_options(topts: dict) -> dict:
    """What of ``transformer_options`` the model call's output depends on, to compare across runs: all but ECAD's
    own run, wrappers and block patches (each patched clone has its own) and the conditionings' uuids (new at
    every sampler call; they only name the branch). Other nodes' objects stay, compared by identity."""
    out = {k: v for k, v in topts.items() if k not in ("ecad", "uuids", "wrappers", "callbacks", "patches_replace")}
    for k in ("wrappers", "callbacks"):
        if k in topts:
            out[k] = {
                kind: {n: f for n, f in d.items() if n not in (WRAPPER_KEY, STEP0_KEY)} for kind, d in topts[k].items()
            }
    if "patches_replace" in topts:
        out["patches_replace"] = {
            kind: {n: f for n, f in d.items() if not is_ecad_patch(f)} for kind, d in topts["patches_replace"].items()
        }
    return out


_PLAIN = (int, float, str, bool, type(None))


def _cond_sig(cond):
    """What must match for conditionings to be stacked on the batch axis; None: this one cannot be."""
    if not isinstance(cond, list) or len(cond) != 1:
        return None
    t, extra = cond[0]
    if not isinstance(t, torch.Tensor) or t.shape[0] != 1:
        return None
    sig = [("", tuple(t.shape), t.dtype)]
    for k, v in sorted(extra.items()):
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == 1:
            sig.append((k, tuple(v.shape), v.dtype))
        elif isinstance(v, _PLAIN):
            sig.append((k, "=", v))
        else:  # hooks, control nets, areas...: sampled alone
            return None
    return tuple(sig)


def _join(conds: list) -> list:
    """One conditioning whose batch rows are ``conds``' (all of one ``_cond_sig``)."""
    extra = {
        k: torch.cat([c[0][1][k] for c in conds]) if isinstance(v, torch.Tensor) else v
        for k, v in conds[0][0][1].items()
    }
    return [[torch.cat([c[0][0] for c in conds]), extra]]


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
