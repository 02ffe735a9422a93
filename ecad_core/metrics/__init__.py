"""Quality metrics shared by the schedule search and evaluation.

Fidelity to the full-compute result (no extra model): ``psnr``, ``ssim``,
``latent_rel_mse``, ``fidelity_loss``. Optional learned metrics (CLIP score,
ImageReward) from local weights: ``load_metric``; missing pieces raise
``MetricUnavailable``. FID with clean-fid's resizing (``fid``) and LPIPS (``lpips``),
also from local weights only. Names are imported on first use (``names`` needs no torch).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .names import DEFAULT_SPACE, FIDELITY_SPACES, IMAGE_SPACES, LEARNED_METRICS, METRICS

if TYPE_CHECKING:
    from .base import MetricUnavailable
    from .fid import InceptionFeatures, clean_resize, fid_from_features, frechet_distance
    from .fidelity import fidelity_loss, gaussian_window, image_mse, latent_rel_mse, per_sample_loss, psnr, ssim
    from .learned import ClipScore, ImageRewardScore, LearnedMetric, load_metric, score_drop
    from .lpips import Lpips

_EXPORTS = {
    **dict.fromkeys(
        ("fidelity_loss", "gaussian_window", "image_mse", "latent_rel_mse", "per_sample_loss", "psnr", "ssim"),
        ".fidelity",
    ),
    **dict.fromkeys(("ClipScore", "ImageRewardScore", "LearnedMetric", "load_metric", "score_drop"), ".learned"),
    "MetricUnavailable": ".base",
    **dict.fromkeys(("InceptionFeatures", "clean_resize", "fid_from_features", "frechet_distance"), ".fid"),
    "Lpips": ".lpips",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DEFAULT_SPACE",
    "FIDELITY_SPACES",
    "IMAGE_SPACES",
    "LEARNED_METRICS",
    "METRICS",
    "ClipScore",
    "ImageRewardScore",
    "InceptionFeatures",
    "LearnedMetric",
    "Lpips",
    "MetricUnavailable",
    "clean_resize",
    "fid_from_features",
    "fidelity_loss",
    "frechet_distance",
    "gaussian_window",
    "image_mse",
    "latent_rel_mse",
    "load_metric",
    "per_sample_loss",
    "psnr",
    "score_drop",
    "ssim",
]
