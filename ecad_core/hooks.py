"""Module-level hooks: route a component module's forward through the engine.

One hook class per job, attached to a module instance and removed cleanly
(the diffusers ``hooks/`` pattern): attaching sets an instance attribute
``forward`` that wraps the class's forward; detaching deletes it, so the module
is exactly as it was. Nothing is copied from the model's own code.
"""
from __future__ import annotations

import functools

import torch

from .engine import CacheEngine

_ATTR = "_ecad_unit_hook"


class UnitHook:
    """Serves one unit (block, component) of a model from the engine."""

    def __init__(self, engine: CacheEngine, unit: int, name: str):
        self.engine = engine
        self.unit = unit
        self.name = name
        self.module: torch.nn.Module | None = None
        self._had_instance_forward = False
        self._previous_forward = None

    def attach(self, module: torch.nn.Module) -> "UnitHook":
        if getattr(module, _ATTR, None) is not None:
            raise RuntimeError(f"{self.name}: this module already has an ECAD hook; remove the other "
                               f"schedule first (handle.remove())")
        self.module = module
        self._had_instance_forward = "forward" in module.__dict__
        self._previous_forward = module.forward
        original = self._previous_forward
        engine, unit = self.engine, self.unit

        @functools.wraps(original)
        def forward(*args, **kwargs):
            return engine.call(unit, original, args, kwargs)

        module.forward = forward
        setattr(module, _ATTR, self)
        return self

    def detach(self) -> None:
        m = self.module
        if m is None:
            return
        if self._had_instance_forward:
            m.forward = self._previous_forward
        else:
            del m.forward
        delattr(m, _ATTR)
        self.module = None


def has_hook(module: torch.nn.Module) -> bool:
    return getattr(module, _ATTR, None) is not None
