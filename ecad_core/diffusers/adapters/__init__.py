"""Which modules of a diffusers transformer are ECAD's units: one ``DiffusersAdapter`` per model family, each in
its own module of this package (``pixart.py``, ``flux.py``), found by pkgutil (``ecad_core._registry``)."""

from __future__ import annotations

import torch

from ..._registry import Registry
from ...errors import ModelMismatchError
from .base import BlockGroupSpec, BlockUnits, DiffusersAdapter, UnitMap

_adapters = Registry(__name__, DiffusersAdapter)


def adapters() -> list[type[DiffusersAdapter]]:
    """Every registered adapter, in matching order."""
    return _adapters.classes()


def refresh() -> None:
    """Discover the adapter modules again (after a test extended this package's ``__path__``)."""
    _adapters.refresh()


def adapter_class(transformer: torch.nn.Module) -> type[DiffusersAdapter] | None:
    """The first adapter that matches ``transformer``, None if none does."""
    return next((a for a in adapters() if a.matches(transformer)), None)


def adapter_for(transformer: torch.nn.Module) -> DiffusersAdapter:
    """The adapter of a diffusers transformer; ModelMismatchError naming the supported ones if none fits."""
    cls = adapter_class(transformer)
    if cls is None:
        raise ModelMismatchError(
            f"ECAD has no diffusers adapter for {type(transformer).__name__}: supported are "
            f"{' and '.join(a.supports for a in adapters())}"
        )
    return cls(transformer)


def find_diffusers_units(transformer: torch.nn.Module) -> UnitMap:
    """Units of a diffusers transformer (PixArt-α/Σ, FLUX.1, ...); a clear error for anything else."""
    return adapter_for(transformer).units()


__all__ = [
    "BlockGroupSpec",
    "BlockUnits",
    "DiffusersAdapter",
    "UnitMap",
    "adapter_class",
    "adapter_for",
    "adapters",
    "find_diffusers_units",
    "refresh",
]
