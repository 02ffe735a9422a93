"""FID (Fréchet Inception Distance) with clean-fid's resizing, from a local Inception weights file.

Feature extractor: the **FID Inception v3** of pytorch-fid, i.e. torchvision's
``Inception3`` with the four block variants that make it match the TensorFlow
graph ``inception-2015-12-05`` every published FID uses (average pools that do
not count padding, a max pool in the last block, 1008 classes). Its weights are
pytorch-fid's port of that graph, ``pt_inception-2015-12-05-6726825d.pth``
(a plain state dict, loaded here with ``torch.load(weights_only=True)``; nothing
is downloaded). We use this architecture rather than torchvision's ImageNet
``inception_v3`` because torchvision's weights give different features, so its
FIDs are not comparable with the paper's or anyone else's; and rather than
clean-fid's TorchScript file because a state dict can be inspected, loaded
without executing a pickled graph, and built with random weights in tests.

Preprocessing follows clean-fid's ``clean`` mode: images are quantised to
uint8 (as if saved to PNG), each channel is resized to 299x299 with PIL's
bicubic filter in float mode, and the values are normalised as the TF graph
does, ``(x - 128) / 128``. The features are the 2048-d average pool output.
Scores match clean-fid up to the small numeric differences between the two
ports of the TF weights.

FID on fewer than a few thousand images is strongly biased upwards (the
covariance of 2048-d features needs many samples); compare schedules only at
equal image counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import MetricUnavailable, read_state_dict

FID_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# -- images ------------------------------------------------------------------------
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] floats in [0, 1] -> uint8 [N, H, W, 3], rounded as a PNG save would."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be a tensor [N, 3, H, W] in [0, 1], got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
        )
    arr = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (arr * 255.0).round().astype(np.uint8)


def clean_resize(image: np.ndarray, size: int = FID_SIZE) -> np.ndarray:
    """clean-fid's resize of one uint8 image [H, W, 3]: per channel, PIL bicubic in float ('F') mode.

    Returns float32 [size, size, 3] with values in [0, 255].
    """
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"clean_resize takes a uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    bicubic = Image.BICUBIC  # type: ignore[attr-defined]  # Pillow < 9.1 has no Image.Resampling
    chans = [
        np.asarray(
            Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize((size, size), resample=bicubic),
            dtype=np.float32,
        )
        for c in range(3)
    ]
    return np.clip(np.stack(chans, axis=2), 0, 255)


def load_image_folder(folder: str | Path, limit: int | None = None) -> list[np.ndarray]:
    """The images of a folder (sorted by name, not recursive) as uint8 arrays [H, W, 3] of any size."""
    from PIL import Image

    d = Path(folder)
    if not d.is_dir():
        raise ValueError(f"FID reference folder {d}: not a folder")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ValueError(f"FID reference folder {d}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except OSError as e:
            raise ValueError(f"FID reference image {f}: cannot read ({e})") from None
    return out


# -- the FID Inception (pytorch-fid's architecture) ----------------------------------
def _fid_blocks():
    from torchvision.models import inception as tvi

    class FIDInceptionA(tvi.InceptionA):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            # TF's average pool does not count the padding
            bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            return [b1, b5, b3, bp]

    class FIDInceptionC(tvi.InceptionC):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            b7d = self.branch7x7dbl_1(x)
            for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                b7d = m(b7d)
            bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            return [b1, b7, b7d, bp]

    class FIDInceptionE(tvi.InceptionE):
        def __init__(self, in_channels, max_pool):
            super().__init__(in_channels)
            # the last block of TF's graph max-pools its pool branch (kept for comparable scores)
            self.max_pool = max_pool

        def _forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
            pooled = (
                F.max_pool2d(x, 3, stride=1, padding=1)
                if self.max_pool
                else F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            )
            return [b1, b3, b3d, self.branch_pool(pooled)]

    return tvi, FIDInceptionA, FIDInceptionC, FIDInceptionE


def build_fid_inception() -> torch.nn.Module:
    """The FID Inception v3 architecture (pytorch-fid's ``fid_inception_v3``), weights not loaded.

    Its ``state_dict`` keys are those of ``pt_inception-2015-12-05-6726825d.pth``.
    """
    try:
        tvi, A, C, E = _fid_blocks()
    except ImportError:
        raise MetricUnavailable(
            "FID needs the 'torchvision' package for the Inception architecture, which is "
            "not installed (pip install torchvision)"
        ) from None
    net = tvi.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = A(192, pool_features=32)
    net.Mixed_5c = A(256, pool_features=64)
    net.Mixed_5d = A(288, pool_features=64)
    net.Mixed_6b = C(768, channels_7x7=128)
    net.Mixed_6c = C(768, channels_7x7=160)
    net.Mixed_6d = C(768, channels_7x7=160)
    net.Mixed_6e = C(768, channels_7x7=192)
    net.Mixed_7b = E(1280, max_pool=False)
    net.Mixed_7c = E(2048, max_pool=True)
    return net


class InceptionFeatures:
    """2048-d pool features of the FID Inception, loaded from a local weights file."""

    name = "fid"

    def __init__(self, path: str | Path | None, device: str | torch.device = "cpu", batch_size: int = 16):
        if path is None:
            raise MetricUnavailable(
                f"FID needs local Inception weights: pass pytorch-fid's {WEIGHTS_FILE} (nothing is downloaded)"
            )
        p = Path(path)
        if p.is_dir():
            p = p / WEIGHTS_FILE
        if not p.is_file():
            raise MetricUnavailable(
                f"FID Inception weights not found: {p} does not exist (expected pytorch-fid's "
                f"{WEIGHTS_FILE}; nothing is downloaded)"
            )
        net = build_fid_inception()
        state = read_state_dict(p, "FID Inception weights")
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise MetricUnavailable(
                f"FID Inception weights {p} do not fit pytorch-fid's FID Inception v3: {str(e).splitlines()[0]}"
            ) from None
        self.net: Any = net.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.path = p

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.Conv2d_1a_3x3(x)
        x = n.Conv2d_2a_3x3(x)
        x = n.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = n.Conv2d_3b_1x1(x)
        x = n.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for m in (
            n.Mixed_5b,
            n.Mixed_5c,
            n.Mixed_5d,
            n.Mixed_6a,
            n.Mixed_6b,
            n.Mixed_6c,
            n.Mixed_6d,
            n.Mixed_6e,
            n.Mixed_7a,
            n.Mixed_7b,
            n.Mixed_7c,
        ):
            x = m(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def features_uint8(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """Features (float64 [N, 2048]) of uint8 images [H, W, 3] (any sizes)."""
        feats: list = []
        batch: list = []

        def flush():
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(self.device)
            feats.append(self._forward((x - 128.0) / 128.0).double().cpu().numpy())
            batch.clear()

        for img in images:
            batch.append(clean_resize(img))
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        if not feats:
            raise ValueError("no images to compute FID features of")
        return np.concatenate(feats)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """Features (float64 [N, 2048]) of images [N, 3, H, W] in [0, 1] (quantised to uint8 first)."""
        return self.features_uint8(list(to_uint8(images)))


# -- the distance ----------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as numpy's cov) of features [N, D]; N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, got features of shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2), which stays real and
    stable for the singular covariances of small image sets, without scipy.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"FID statistics do not match: means {mu1.shape}/{mu2.shape}, covariances {s1.shape}/{s2.shape}"
        )
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)  # rounding can make an identical pair slightly negative


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets [N, D] and [M, D] (unbiased covariances, as pytorch-fid/clean-fid).

    With fewer images than feature dimensions (N * M < D^2) the trace term is computed exactly in
    sample space: with centred features A1, A2, S1 S2 has the nonzero eigenvalues of
    (A1 A2^T)(A1 A2^T)^T / ((N-1)(M-1)), so tr((S1 S2)^(1/2)) is the sum of the singular values of
    A1 A2^T over sqrt((N-1)(M-1)): an N x M SVD instead of two D x D eigen-decompositions.
    """
    a, b = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    for f in (a, b):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"FID needs at least 2 images per set, got features of shape {f.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"FID feature sets differ in width: {a.shape[1]} vs {b.shape[1]}")
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    if n * m >= d * d:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    a1, b1 = a - a.mean(0), b - b.mean(0)
    tr1, tr2 = float((a1**2).sum()) / (n - 1), float((b1**2).sum()) / (m - 1)
    tr_covmean = float(np.linalg.svd(a1 @ b1.T, compute_uv=False).sum()) / np.sqrt((n - 1) * (m - 1))
    diff = a.mean(0) - b.mean(0)
    return max(float(diff @ diff) + tr1 + tr2 - 2.0 * tr_covmean, 0.0)
