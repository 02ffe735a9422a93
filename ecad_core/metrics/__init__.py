"""Quality metrics shared by the schedule search and evaluation.

Fidelity to the full-compute result (no extra model): ``psnr``, ``ssim``,
``latent_rel_mse``, ``fidelity_loss``. Optional learned metrics (CLIP score,
ImageReward) from local weights: ``load_metric``; missing pieces raise
``MetricUnavailable``. FID with clean-fid's resizing (``fid``) and LPIPS (``lpips``),
also from local weights only.
"""
from .fidelity import (DEFAULT_SPACE, FIDELITY_SPACES, IMAGE_SPACES, fidelity_loss, gaussian_window,
                       image_mse, latent_rel_mse, per_sample_loss, psnr, ssim)
from .learned import (LEARNED_METRICS, ClipScore, ImageRewardScore, LearnedMetric, MetricUnavailable,
                      load_metric, score_drop)
from .fid import InceptionFeatures, clean_resize, fid_from_features, frechet_distance
from .lpips import Lpips

__all__ = ["DEFAULT_SPACE", "FIDELITY_SPACES", "IMAGE_SPACES", "LEARNED_METRICS", "fidelity_loss",
           "per_sample_loss", "psnr", "ssim", "image_mse", "latent_rel_mse", "gaussian_window",
           "MetricUnavailable", "LearnedMetric", "ClipScore", "ImageRewardScore", "load_metric", "score_drop",
           "InceptionFeatures", "clean_resize", "fid_from_features", "frechet_distance", "Lpips"]
