"""Side-by-side comparison grid: no cache | schedule | difference, one row per sample.

The difference column is ``|schedule - no cache|`` averaged over channels and
multiplied by ``diff_gain`` (default 4, clipped to 1) so that small caching
errors are visible; black means identical. Each column has a caption strip.
With several schedules the columns repeat (schedule, difference) per schedule.
Latent outputs (no decoder) are shown as their first three channels, each
sample min-max normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

CAPTION_H = 14
PAD = 2


def as_display(x: torch.Tensor) -> torch.Tensor:
    """An output as a [3, H, W] image in [0, 1] (latents: first 3 channels, min-max normalised; a video's frames
    side by side)."""
    x = x.detach().float().cpu()
    if x.ndim == 4:  # a video [C, frames, H, W]: its frames side by side
        x = x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)
    if x.ndim != 3:
        raise ValueError(f"grid cells must be [C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] == 3 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        return x
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def _caption(text: str, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, CAPTION_H), (24, 24, 24))
    ImageDraw.Draw(img).text((2, 1), text[: max(width // 6, 1)], fill=(230, 230, 230))
    return np.asarray(img, dtype=np.float32) / 255.0


def comparison_grid(
    reference: Sequence[torch.Tensor],
    schedules: Sequence[tuple[str, Sequence[torch.Tensor]]],
    rows: int = 4,
    diff_gain: float = 4.0,
) -> torch.Tensor:
    """IMAGE [H, W, 3] float in [0, 1] (ComfyUI's layout without the batch dimension)."""
    n = min([int(rows), len(reference)] + [len(outs) for _, outs in schedules])
    if n < 1:
        raise ValueError("the grid needs at least one sample")
    ref = [as_display(r) for r in reference[:n]]
    h, w = ref[0].shape[1:]
    cols: list[tuple[str, list[torch.Tensor]]] = [("no cache", ref)]
    for label, outs in schedules:
        imgs = [as_display(o) for o in outs[:n]]
        diffs = [
            ((a - b).abs().mean(0, keepdim=True) * diff_gain).clamp(0, 1).expand(3, -1, -1) for a, b in zip(imgs, ref)
        ]
        cols += [(label, imgs), (f"|diff| x{diff_gain:g}", diffs)]
    width = len(cols) * (w + PAD) - PAD
    height = CAPTION_H + n * (h + PAD) - PAD
    canvas = np.zeros((height, width, 3), np.float32)
    for ci, (label, imgs) in enumerate(cols):
        x0 = ci * (w + PAD)
        canvas[:CAPTION_H, x0 : x0 + w] = _caption(label, w)
        for ri, img in enumerate(imgs):
            if tuple(img.shape[1:]) != (h, w):
                raise ValueError(f"grid cell of {label!r} is {tuple(img.shape[1:])}, expected {(h, w)}")
            y0 = CAPTION_H + ri * (h + PAD)
            canvas[y0 : y0 + h, x0 : x0 + w] = img.permute(1, 2, 0).numpy()
    return torch.from_numpy(canvas)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Save an IMAGE [H, W, 3] in [0, 1] as PNG."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(p)
    return p
