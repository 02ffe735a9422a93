"""Fidelity of cached outputs to the full-compute outputs: PSNR, SSIM, latent relative MSE.

Images are float tensors in [0, 1], shaped [C, H, W] or [N, C, H, W]; latents
are tensors of any shape (a leading batch dimension is per sample when given
as one batched tensor). Every function returns one value per sample.

The search objective (``fidelity_loss``) compares each candidate's outputs with
the outputs of the *same* prompts and seeds under full compute (no cache),
computed once per search. It needs no extra model, and it measures exactly
what caching changes: the difference to what the model would have produced.
The default space is ``"latent"`` (relative MSE of the final latents):

* it needs no VAE decode (cheap, and available wherever the sampler output is,
  e.g. a ComfyUI LATENT);
* it is scale-free: 0 means identical, 1 means an error as large as the
  reference itself (what an all-zero output would score), ~2 an unrelated
  sample of the same scale; values above 1 are useless schedules.

``"ssim"`` (1 - SSIM on decoded images) and ``"image-mse"`` (pixel MSE on
[0, 1] images, i.e. 10^(-PSNR/10)) are the image-space alternatives; both also
lie in [0, 1] for sensible schedules, so the hypervolume reference point
(1, 1) works for all three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .names import DEFAULT_SPACE, FIDELITY_SPACES


def _as_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"{what} must be an image [C, H, W] or a batch [N, C, H, W], got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def _pair(x, y):
    x, y = _as_batch(x, "image"), _as_batch(y, "reference image")
    if x.shape != y.shape:
        raise ValueError(f"image shape {tuple(x.shape)} differs from reference shape {tuple(y.shape)}")
    return x, y.to(x.device)


def image_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image [N] (float64)."""
    x, y = _pair(x, y)
    return ((x - y) ** 2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image [N]; ``inf`` for identical images."""
    mse = image_mse(x, y)
    return 10.0 * torch.log10(data_range**2 / mse)  # mse 0 -> inf


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian window."""
    t = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean SSIM per image [N] (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, per channel, over the valid window positions,
    averaged over channels and positions. Images smaller than the window use the
    largest odd window that fits (sigma scaled with it).
    """
    x, y = _pair(x, y)
    _n, c, h, w = x.shape
    size = min(window_size, h if h % 2 else h - 1, w if w % 2 else w - 1)
    if size < 1:
        raise ValueError(f"images of {h}x{w} pixels are too small for SSIM")
    sig = sigma * size / window_size
    g = gaussian_window(size, sig).to(x.device)
    win = (g[:, None] * g[None, :]).expand(c, 1, size, size).contiguous()

    def filt(z):
        return F.conv2d(z, win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def latent_rel_mse(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """||x - y||^2 / ||y||^2 per sample [N] (float64). Tensors without a batch dimension are one sample."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("latent_rel_mse takes two torch.Tensors")
    if x.shape != y.shape:
        raise ValueError(f"output shape {tuple(x.shape)} differs from reference shape {tuple(y.shape)}")
    x = x.detach().to(torch.float64)
    y = y.detach().to(device=x.device, dtype=torch.float64)
    if x.ndim <= 3:  # one sample ([C, H, W] latents, FLUX's packed [tokens, channels], ...)
        x, y = x.reshape(1, -1), y.reshape(1, -1)
    else:
        x, y = x.flatten(1), y.flatten(1)
    return ((x - y) ** 2).sum(1) / (y**2).sum(1).clamp_min(eps)


def _cat(items: Sequence[torch.Tensor] | torch.Tensor, what: str) -> list[torch.Tensor]:
    if isinstance(items, torch.Tensor):
        return [items]
    items = list(items)
    if not items:
        raise ValueError(f"no {what} to compare")
    return items


def per_sample_loss(outputs, references, space: str = DEFAULT_SPACE) -> torch.Tensor:
    """The loss of each output against its reference (float64 [n]), in ``space``."""
    if space not in FIDELITY_SPACES:
        raise ValueError(f"unknown fidelity space {space!r}; known: {', '.join(FIDELITY_SPACES)}")
    outs, refs = _cat(outputs, "outputs"), _cat(references, "references")
    if len(outs) != len(refs):
        raise ValueError(
            f"{len(outs)} output(s) but {len(refs)} reference(s): each output needs the "
            "reference of the same prompt and seed"
        )
    vals = []
    for o, r in zip(outs, refs):
        if space == "latent":
            vals.append(latent_rel_mse(o, r))
        elif space == "ssim":
            vals.append(1.0 - ssim(o, r))
        else:
            vals.append(image_mse(o, r))
    return torch.cat([v.reshape(-1).cpu() for v in vals])


def fidelity_loss(outputs, references, space: str = DEFAULT_SPACE) -> float:
    """Mean loss of ``outputs`` against the full-compute ``references`` (lower is better, 0 = identical).

    ``space``: ``"latent"`` (relative MSE, default), ``"ssim"`` (1 - SSIM, images in [0, 1]) or
    ``"image-mse"`` (MSE of [0, 1] images = 10^(-PSNR/10)). A non-finite output gives ``inf``.
    """
    v = per_sample_loss(outputs, references, space)
    m = float(v.mean())
    return m if math.isfinite(m) else math.inf
