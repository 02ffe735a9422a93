"""ComfyUI model adapters: one ``ComfyAdapter`` per model family, each in its own module of this package
(``pixart.py``, ``flux.py``, ``dit_blocks.py``), found by pkgutil (``ecad_core._registry``). Each declares the
ComfyUI model classes it serves; ``adapter_for`` asks them in order."""

from __future__ import annotations

from ...ecad_core._registry import Registry
from ...ecad_core.errors import ModelMismatchError
from .base import ComfyAdapter, is_ecad_patch, mark

_adapters = Registry(__name__, ComfyAdapter)


def adapters() -> list[type[ComfyAdapter]]:
    """Every registered adapter, in matching order."""
    return _adapters.classes()


def refresh() -> None:
    """Discover the adapter modules again (after a test extended this package's ``__path__``)."""
    _adapters.refresh()


def adapter_for(model_patcher) -> ComfyAdapter:
    """The adapter for the diffusion model inside a ComfyUI MODEL; a clear error if none fits."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if dm is None:
        raise ModelMismatchError("ECAD: the MODEL input has no diffusion_model (is it a diffusion model?)")
    return adapter_of(dm)


def adapter_of(dm) -> ComfyAdapter:
    """The adapter of a ComfyUI diffusion model (``model_patcher.model.diffusion_model``)."""
    for cls in adapters():
        if cls.matches(dm):
            return cls(dm)
    known = [a.supports for a in adapters()]
    listed = ", ".join(known[:-1]) + f", and {known[-1]}" if len(known) > 1 else "".join(known)
    raise ModelMismatchError(f"ECAD does not support {type(dm).__name__} models yet: supported are {listed}")


__all__ = ["ComfyAdapter", "adapter_for", "adapter_of", "adapters", "is_ecad_patch", "mark", "refresh"]
