"""Optional learned quality metrics (CLIP score, ImageReward) from local weights only.

Nothing is downloaded: a metric whose package or weights are missing raises
``MetricUnavailable`` naming what is missing. As a search objective a learned
metric gives the *score drop* against the full-compute images of the same
prompts and seeds: ``mean(score(reference)) - mean(score(output))`` (0 for the
no-cache schedule, positive when caching hurts).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from .base import MetricUnavailable, offline
from .names import LEARNED_METRICS


class LearnedMetric(Protocol):
    name: str

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score per image (float [N], higher is better); images [N, 3, H, W] in [0, 1]."""
        ...


class ClipScore:
    """CLIP score = 100 * cos(image embedding, text embedding), clipped at 0 (Hessel et al. 2021).

    ``path``: a local folder with a transformers ``CLIPModel`` and its processor
    (``save_pretrained`` output, e.g. of openai/clip-vit-large-patch14).
    """

    name = "clip"

    def __init__(self, path: str | Path | None, device: str | torch.device = "cpu"):
        if path is None:
            raise MetricUnavailable(
                "the CLIP score needs local CLIP weights: pass the folder of a "
                "transformers CLIPModel (nothing is downloaded)"
            )
        p = Path(path)
        if not (p / "config.json").is_file():
            raise MetricUnavailable(
                f"CLIP weights not found: {p / 'config.json'} does not exist (expected a "
                "transformers CLIPModel folder saved with save_pretrained; nothing is "
                "downloaded)"
            )
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError:
            raise MetricUnavailable(
                "the CLIP score needs the 'transformers' package, which is not installed (pip install transformers)"
            ) from None
        try:
            with offline():
                self.model = CLIPModel.from_pretrained(str(p), local_files_only=True).eval().to(device)
                self.processor = CLIPProcessor.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as e:
            raise MetricUnavailable(f"cannot load CLIP from {p}: {str(e).splitlines()[0]}") from None
        self.device = torch.device(device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        images = images.clamp(0, 1)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} image(s) but {len(prompts)} prompt(s)")
        inputs = self.processor(
            text=list(prompts),
            images=list(images.float().cpu()),
            return_tensors="pt",
            padding=True,
            truncation=True,
            do_rescale=False,
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        return (100.0 * (img * txt).sum(-1)).clamp_min(0).cpu().double()


class ImageRewardScore:
    """ImageReward (Xu et al. 2023), ECAD's fitness metric, from local files only.

    ``path``: the official ``ImageReward.pt`` (THUDM/ImageReward), or its folder.
    Beside it: ``med_config.json`` (else BLIP's default text config, used only if
    it fits the checkpoint). The ``bert-base-uncased`` tokenizer: the folder
    ``tokenizer`` if given, else a ``tokenizer/`` or ``bert-base-uncased/`` folder
    beside the checkpoint, else the local Hugging Face cache. A self-contained
    port of the official scoring code (``ecad_core.metrics.imagereward``), checked
    against it; needs ``transformers`` for the tokenizer only, not the
    ``image-reward`` package. Images are scored in batches of ``batch_size``.
    """

    name = "imagereward"

    def __init__(
        self,
        path: str | Path | None,
        device: str | torch.device = "cpu",
        tokenizer: str | Path | None = None,
        batch_size: int = 16,
    ):
        if path is None:
            raise MetricUnavailable(
                "the ImageReward metric needs its local checkpoint file ImageReward.pt "
                "(THUDM/ImageReward, with med_config.json and the bert-base-uncased "
                "tokenizer beside it); nothing is downloaded"
            )
        from .imagereward import ImageReward

        self._model = ImageReward(path, device, tokenizer=tokenizer, batch_size=batch_size)
        self.device = self._model.device

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Official ImageReward score per image (float64 [N]); images [N, 3, H, W] in [0, 1]."""
        return self._model.score(images, prompts)


def load_metric(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu") -> LearnedMetric:
    """A learned metric by name (``clip`` or ``imagereward``) from local ``weights``."""
    if name == "clip":
        return ClipScore(weights, device)
    if name == "imagereward":
        return ImageRewardScore(weights, device)
    raise ValueError(f"unknown learned metric {name!r}; known: {', '.join(LEARNED_METRICS)}")


def score_drop(
    metric: LearnedMetric, outputs: Sequence[torch.Tensor], prompts: Sequence[str], reference_scores: torch.Tensor
) -> float:
    """mean(reference scores) - mean(scores of outputs): the search loss of a learned metric."""
    imgs = torch.stack([o if o.ndim == 3 else o[0] for o in outputs])
    s = metric.score(imgs, prompts)
    return float(reference_scores.double().mean() - s.double().mean())
