"""The zero-overhead reference: the simplest module-output cache that replays a schedule.

No signatures, no branches, no statistics, no remapping: each unit module's
``forward`` is replaced by a closure that returns the output it stored the last
time it ran whenever the schedule's bit for the current step is 0. The bench
sets ``step`` itself before each model call. Whatever the project's engine
costs beyond this is overhead; a faster cache than this one would have to skip
different work, not do the same skipping more cheaply.
"""
from __future__ import annotations

import numpy as np
import torch


class CeilingCache:
    """Replays ``bits`` ([steps, units], 1 = compute) on ``modules`` (one per unit, layout order)."""

    def __init__(self, modules: list[torch.nn.Module], bits: np.ndarray):
        bits = np.asarray(bits, dtype=bool)
        if bits.ndim != 2 or bits.shape[1] != len(modules):
            raise ValueError(f"CeilingCache: bits must be [steps, {len(modules)}] for {len(modules)} modules, "
                             f"got shape {bits.shape}")
        self.rows = [row.tolist() for row in bits]
        self.rows[0] = [True] * len(modules)  # step 0 always computes
        self.step = 0
        self.outputs: list = [None] * len(modules)
        self.modules = list(modules)
        for u, m in enumerate(self.modules):
            if "forward" in m.__dict__:
                raise RuntimeError(f"CeilingCache: module {u} ({type(m).__name__}) already has a patched forward")
            m.forward = self._unit_forward(u, m.forward)

    def _unit_forward(self, u: int, original):
        outputs, rows, this = self.outputs, self.rows, self

        def forward(*args, **kwargs):
            if not rows[this.step][u]:
                return outputs[u]
            out = outputs[u] = original(*args, **kwargs)
            return out

        return forward

    def reset(self) -> None:
        """Forget stored outputs (start of a new image)."""
        self.step = 0
        for i in range(len(self.outputs)):
            self.outputs[i] = None

    def remove(self) -> None:
        for m in self.modules:
            del m.forward
        self.modules = []
        self.outputs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
