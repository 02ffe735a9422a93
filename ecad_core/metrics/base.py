"""What every metric module shares: the "cannot run here" error, reading local weights, offline loading."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ..errors import EcadError


class MetricUnavailable(EcadError, RuntimeError):
    """A chosen metric cannot run here: its package or its local weights are missing."""


def read_state_dict(file: Path, what: str) -> dict:
    """A state dict from a local weights file (``torch.load``, weights only); MetricUnavailable naming
    ``what`` and the file when it cannot be read or is not a state dict."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file means the metric cannot run
        raise MetricUnavailable(f"cannot read {what} {file}: {e}") from None
    if not isinstance(state, dict):
        raise MetricUnavailable(f"{what} {file}: expected a state dict, got {type(state).__name__}")
    return state


@contextlib.contextmanager
def offline():
    """Within: Hugging Face libraries load local files only (nothing is downloaded)."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
