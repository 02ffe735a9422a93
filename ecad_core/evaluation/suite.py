"""Which quality metrics an evaluation computes, their local models, and why any is skipped.

Every metric is optional. One whose package or weights are missing is recorded
in ``skipped`` with the loader's message and reported as "n/a" with that note:
never a crash, never a silent zero. The metric code itself lives in
``ecad_core.metrics`` (shared with the schedule search).

Metrics, per schedule (means over the generated images):

* fidelity to full compute, same prompts and seeds: ``psnr`` (dB), ``ssim``,
  ``lpips`` (local AlexNet + lpips linear weights); on latents (no decoder)
  ``latent_rel_mse`` replaces them;
* prompt alignment / preference: ``clip`` (CLIP score), ``imagereward``;
* distribution: ``fid`` against the no-cache images of the same prompts and
  seeds, and ``fid_ref`` against a folder of reference images (e.g. COCO or
  MJHQ) when one is given; both with clean-fid's resizing.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..metrics import (
    ClipScore,
    ImageRewardScore,
    InceptionFeatures,
    Lpips,
    MetricUnavailable,
    fid_from_features,
    latent_rel_mse,
    psnr,
    ssim,
)
from ..metrics.fid import load_image_folder
from ..metrics.names import METRICS

log = logging.getLogger("ecad.eval")

FIDELITY = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "lpips": False,
    "clip": True,
    "imagereward": True,
    "fid": False,
    "fid_ref": False,
    "latent_rel_mse": False,
}


def parse_metrics(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"psnr, ssim,fid"`` (or a list, or ``all``/None for every metric) -> validated names in order."""
    if text is None:
        return METRICS
    items = text.replace(",", " ").split() if isinstance(text, str) else [str(t).strip() for t in text]
    items = [i.lower() for i in items if i]
    if not items or items == ["all"]:
        return METRICS
    bad = [i for i in items if i not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, bad))}; known: {', '.join(METRICS)} (or 'all')")
    return tuple(dict.fromkeys(items))


@dataclass
class MetricWeights:
    """Local weights of the model-based metrics (None: not given, the metric is skipped with a note)."""

    clip: str | Path | None = None  # transformers CLIPModel folder
    imagereward: str | Path | None = None  # ImageReward.pt or its folder (med_config.json, tokenizer beside)
    lpips: str | Path | None = None  # folder: alex.pth + alexnet-owt-7be5be79.pth
    inception: str | Path | None = None  # pt_inception-2015-12-05-6726825d.pth (or its folder)


@dataclass
class MetricSuite:
    """The requested metrics with their loaded models; ``skipped`` maps metric -> reason."""

    requested: tuple[str, ...]
    models: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    fid_reference: str | None = None
    _ref_features: np.ndarray | None = None
    _nocache_key: tuple | None = None
    _nocache_features: np.ndarray | None = None

    @classmethod
    def load(
        cls,
        metrics=None,
        weights: MetricWeights | None = None,
        *,
        fid_reference: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> MetricSuite:
        w = weights or MetricWeights()
        suite = cls(parse_metrics(metrics), fid_reference=str(fid_reference) if fid_reference else None)
        loaders = {
            "lpips": lambda: Lpips(w.lpips, device),
            "clip": lambda: ClipScore(w.clip, device),
            "imagereward": lambda: ImageRewardScore(w.imagereward, device),
            "fid": lambda: InceptionFeatures(w.inception, device),
        }
        for name in suite.requested:
            if name in loaders:
                try:
                    suite.models[name] = loaders[name]()
                except MetricUnavailable as e:
                    suite.skip(name, str(e))
        if fid_reference is not None and "fid" in suite.models:
            # read (and featurise) the folder once; a bad folder is a user error, not a missing model
            suite._ref_features = suite.models["fid"].features_uint8(load_image_folder(fid_reference))
        elif fid_reference is not None and "fid" not in suite.requested:
            raise ValueError("a FID reference folder was given but the metric 'fid' is not selected")
        return suite

    def skip(self, name: str, why: str) -> None:
        if name not in self.skipped:
            self.skipped[name] = why
            log.warning("ECAD eval: metric %s skipped: %s", name, why)

    def columns(self, kind: str = "image") -> list[str]:
        """Metric columns of the report, in order."""
        cols = []
        for m in self.requested:
            if kind == "latent" and m in FIDELITY:
                if "latent_rel_mse" not in cols:
                    cols.append("latent_rel_mse")
                continue
            cols.append(m)
            if m == "fid" and self.fid_reference:
                cols.append("fid_ref")
        return cols

    def score(
        self,
        outputs: list[torch.Tensor],
        references: list[torch.Tensor] | None,
        prompts: Sequence[str] | None,
        kind: str = "image",
    ) -> tuple[dict, dict]:
        """(means, per-sample values) of one schedule's outputs.

        ``references``: the no-cache outputs of the same samples (None for the
        no-cache row itself, whose fidelity columns are not applicable).
        ``kind``: "image" ([3, H, W] in [0, 1]) or "latent" (image metrics are
        skipped: they need a decoder).
        """
        means, per = {}, {}
        if kind == "latent":
            for m in self.requested:
                if m not in FIDELITY:
                    self.skip(m, "needs decoded images; the outputs are latents (connect a VAE)")
            if references is not None and any(m in FIDELITY for m in self.requested):
                v = torch.cat([latent_rel_mse(o.unsqueeze(0), r.unsqueeze(0)) for o, r in zip(outputs, references)])
                per["latent_rel_mse"] = v.tolist()
                means["latent_rel_mse"] = float(v.mean())
            return means, per
        imgs = torch.stack([o.float().clamp(0, 1) for o in outputs])
        refs = torch.stack([r.float().clamp(0, 1) for r in references]) if references is not None else None

        def put(name, values):
            v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
            per[name] = [float(x) for x in v]
            means[name] = float(v.mean())

        if refs is not None:
            if "psnr" in self.requested:
                put("psnr", psnr(imgs, refs))
            if "ssim" in self.requested:
                put("ssim", ssim(imgs, refs))
            if "lpips" in self.models:
                put("lpips", self.models["lpips"].distance(imgs, refs))
        for name in ("clip", "imagereward"):
            if name in self.models:
                if not prompts or any(p is None for p in prompts):
                    self.skip(name, "needs the prompt text of every image (none was given)")
                else:
                    put(name, self.models[name].score(imgs, list(prompts)))
        if "fid" in self.models:
            if len(outputs) < 2:
                self.skip("fid", "needs at least 2 images per set")
            else:
                feats = self.models["fid"].features(imgs)
                if refs is not None:
                    means["fid"] = fid_from_features(feats, self._ref_feats_of(refs))
                if self._ref_features is not None:
                    means["fid_ref"] = fid_from_features(feats, self._ref_features)
        return means, per

    def _ref_feats_of(self, refs: torch.Tensor) -> np.ndarray:
        # the no-cache images are the same for every schedule: featurise them once
        key = (tuple(refs.shape), float(refs.sum()))
        if self._nocache_key != key:
            self._nocache_key = key
            self._nocache_features = self.models["fid"].features(refs)
        return typing.cast(np.ndarray, self._nocache_features)
