"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features"), AlexNet variant, local weights.

The network is the ``lpips`` package's ``LPIPS(net="alex", version="0.1")``
re-stated here so that both of its weight files are read from disk and
nothing is downloaded (the package itself fetches the AlexNet backbone
through torchvision):

* ``alex.pth``: the learned linear layers, from the lpips package
  (``lpips/weights/v0.1/alex.pth``; keys ``lin0.model.1.weight`` ... ``lin4``);
* ``alexnet-owt-7be5be79.pth``: torchvision's ImageNet AlexNet (any
  ``alexnet*.pth`` in the same folder; keys ``features.*``, the classifier is
  ignored).

Distance: images in [0, 1] are mapped to [-1, 1], shifted and scaled as the
lpips package does, passed through AlexNet's five ReLU stages; each stage's
features are unit-normalised over channels, squared differences are weighted
by the linear layer, averaged over space and summed over stages. 0 means
identical; lower is better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .base import MetricUnavailable, read_state_dict

LIN_FILE = "alex.pth"
BACKBONE_GLOB = "alexnet*.pth"
CHANNELS = (64, 192, 384, 256, 256)
# AlexNet ``features`` slices ending after each ReLU (lpips.pretrained_networks.alexnet)
SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def build_lpips_alex() -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """(AlexNet ``features``, the five 1x1 linear layers), weights not loaded."""
    try:
        from torchvision.models import alexnet
    except ImportError:
        raise MetricUnavailable(
            "LPIPS needs the 'torchvision' package for AlexNet, which is not installed (pip install torchvision)"
        ) from None
    features = alexnet(weights=None).features
    lins = torch.nn.ModuleList(torch.nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
    return features, lins


def _find_files(path: Path) -> tuple[Path, Path]:
    if not path.is_dir():
        raise MetricUnavailable(
            f"LPIPS weights folder not found: {path} (expected a folder with the lpips "
            f"package's {LIN_FILE} and torchvision's alexnet-owt-7be5be79.pth)"
        )
    lin = path / LIN_FILE
    backbones = sorted(path.glob(BACKBONE_GLOB))
    if not lin.is_file():
        raise MetricUnavailable(
            f"LPIPS linear weights not found: {lin} does not exist (the lpips package's "
            "weights/v0.1/alex.pth; nothing is downloaded)"
        )
    if not backbones:
        raise MetricUnavailable(
            f"LPIPS backbone weights not found: no {BACKBONE_GLOB} in {path} (torchvision's "
            "alexnet-owt-7be5be79.pth; nothing is downloaded)"
        )
    return lin, backbones[0]


def _load(file: Path) -> dict:
    return read_state_dict(file, "LPIPS weights")


class Lpips:
    """LPIPS-alex distance per image pair, from a local folder (see the module docstring)."""

    name = "lpips"

    def __init__(self, path: str | Path | None, device: str | torch.device = "cpu"):
        if path is None:
            raise MetricUnavailable(
                f"LPIPS needs local weights: a folder with the lpips package's {LIN_FILE} and "
                "torchvision's alexnet-owt-7be5be79.pth (nothing is downloaded)"
            )
        lin_file, backbone_file = _find_files(Path(path))
        features, lins = build_lpips_alex()
        backbone = {k[len("features.") :]: v for k, v in _load(backbone_file).items() if k.startswith("features.")}
        lin = {k.replace("lin", "", 1).replace(".model.1.", "."): v for k, v in _load(lin_file).items()}
        try:
            features.load_state_dict(backbone, strict=True)
            lins.load_state_dict(lin, strict=True)
        except RuntimeError as e:
            raise MetricUnavailable(
                f"LPIPS weights in {path} do not fit LPIPS-alex v0.1: {str(e).splitlines()[0]}"
            ) from None
        self.features: Any = features.eval().to(device)
        self.lins = lins.eval().to(device)
        self.device = torch.device(device)
        self.shift = torch.tensor(SHIFT, device=self.device).view(1, 3, 1, 1)
        self.scale = torch.tensor(SCALE, device=self.device).view(1, 3, 1, 1)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for a, b in SLICES:
            for i in range(a, b):
                x = self.features[i](x)
            out.append(x)
        return out

    @torch.no_grad()
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS per pair (float64 [N]); images [N, 3, H, W] (or [3, H, W]) in [0, 1]."""
        x = x.unsqueeze(0) if x.ndim == 3 else x
        y = y.unsqueeze(0) if y.ndim == 3 else y
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two image batches [N, 3, H, W] of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        x = x.float().clamp(0, 1).to(self.device)
        y = y.float().clamp(0, 1).to(self.device)
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for fx, fy, lin in zip(self._stages(x), self._stages(y), self.lins):
            d = (F.normalize(fx, dim=1, eps=1e-10) - F.normalize(fy, dim=1, eps=1e-10)) ** 2
            total += lin(d).mean(dim=(1, 2, 3)).double().cpu()
        return total
