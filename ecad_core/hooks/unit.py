"""``UnitHook``: one unit served from the engine at its component module's own forward."""

from __future__ import annotations

import functools

import torch

from ..engine import CacheEngine
from ..engine.compiling import outside_compile
from .base import _ForwardHook


class UnitHook(_ForwardHook):
    """Serves one unit (block, component) of a model from the engine."""

    def __init__(self, engine: CacheEngine, unit: int, name: str):
        self.engine = engine
        self.unit = unit
        self.name = name

    def attach(self, module: torch.nn.Module) -> UnitHook:
        engine, unit = self.engine, self.unit

        def make_forward(original):
            @functools.wraps(original)
            def forward(*args, **kwargs):
                return engine.call(unit, original, args, kwargs)

            return outside_compile(forward)

        return self._install(module, make_forward)
