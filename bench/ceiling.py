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
            raise ValueError(
                f"CeilingCache: bits must be [steps, {len(modules)}] for {len(modules)} modules, got shape {bits.shape}"
            )
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


class ComfyFluxCeiling:
    """The simplest cache for ComfyUI's FLUX, whose attention unit is inline in its blocks.

    ComfyUI's FLUX offers block hooks only, so any cache must re-state the block
    around a reused attention output; this one uses the pack's own re-statements
    (``nodes/adapters/flux.py``: ``FluxDoubleRestatement.restated`` /
    ``FluxSingleRestatement.restated``: the arithmetic a cached FLUX block cannot
    avoid) and keeps everything else minimal: outputs in a list, no signatures,
    branches, checks or statistics. The MLP units of the double
    blocks are plain module-output closures, as in ``CeilingCache``.
    ``patches`` goes to ``transformer_options["patches_replace"]["dit"]``.
    """

    def __init__(self, dm, bits: np.ndarray, flux):
        """``flux``: the pack's ``nodes.adapters.flux`` module (its re-statements and ``compact``)."""
        bits = np.asarray(bits, dtype=bool)
        nd, ns = len(dm.double_blocks), len(dm.single_blocks)
        if bits.ndim != 2 or bits.shape[1] != 3 * (nd + ns):
            raise ValueError(f"ComfyFluxCeiling: bits must be [steps, {3 * (nd + ns)}], got shape {bits.shape}")
        self.rows = [row.tolist() for row in bits]
        self.rows[0] = [True] * bits.shape[1]
        self.step = 0
        self.out: list = [None] * bits.shape[1]
        self.cap: dict = {}
        self.capturing = False
        self.double, self.single = flux.FluxDoubleRestatement, flux.FluxSingleRestatement
        self.compact = flux.compact  # parts of fused tensors are stored as copies, as the pack stores them
        self.patched: list[torch.nn.Module] = []
        self.patches = {}
        for i, blk in enumerate(dm.double_blocks):
            self._wrap(blk.img_attn.proj, "img_proj")
            self._wrap(blk.txt_attn.proj, "txt_proj")
            self._wrap_unit(blk.img_mlp, 3 * i + 1)
            self._wrap_unit(blk.txt_mlp, 3 * i + 2)
            self.patches[("double_block", i)] = self._double(blk, 3 * i)
        for j, blk in enumerate(dm.single_blocks):
            self._wrap(blk.linear1, "linear1")
            self._wrap(blk.linear2, "linear2")
            self.patches[("single_block", j)] = self._single(blk, 3 * (nd + j))

    def _wrap(self, m, key):
        """``m``'s (args, output) go to ``cap[key]`` while the original block runs, as the pack captures them."""
        original = m.forward

        def forward(*args, **kwargs):
            o = original(*args, **kwargs)
            if self.capturing:
                self.cap[key] = (args, o)
            return o

        m.forward = forward
        self.patched.append(m)

    def _wrap_unit(self, m, u):
        original, rows, out, this = m.forward, self.rows, self.out, self

        def forward(*args, **kwargs):
            if not rows[this.step][u]:
                return out[u]
            o = out[u] = original(*args, **kwargs)
            return o

        m.forward = forward
        self.patched.append(m)

    def _run_original(self, extra, args):
        self.cap.clear()
        self.capturing = True
        try:
            return extra["original_block"](args)
        finally:
            self.capturing = False

    def _double(self, blk, u):
        def patch(args, extra):
            if self.rows[self.step][u]:
                o = self._run_original(extra, args)
                self.out[u] = (self.cap["img_proj"][1], self.cap["txt_proj"][1])
                return o
            return self.double.restated(blk, args, self.out[u])

        return patch

    def _single(self, blk, u):
        out = self.out

        def setter(k):
            def s(v):
                out[k] = self.compact(v)

            return s

        setters = (setter(u), setter(u + 1), setter(u + 2))

        def patch(args, extra):
            row = self.rows[self.step]
            if row[u] and row[u + 1] and row[u + 2]:
                o = self._run_original(extra, args)
                out[u], out[u + 1], out[u + 2] = map(self.compact, self.single.parts(blk, self.cap))
                return o
            return self.single.restated(
                blk,
                args,
                None if row[u] else out[u],
                None if row[u + 1] else out[u + 1],
                None if row[u + 2] else out[u + 2],
                *setters,
            )

        return patch

    def remove(self) -> None:
        for m in self.patched:
            del m.forward
        self.patched = []
        # the hook closures and ``patches`` refer to this object (a cycle): free the outputs now, not at gc
        self.out[:] = [None] * len(self.out)
        self.patches.clear()
        self.cap.clear()
