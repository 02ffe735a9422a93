"""ComfyUI's PixArt-α/Σ block, re-stated so that a reused unit's input is never built.

``PixArtMSBlock.forward`` computes ``norm1(x)`` and its modulation before ``attn``
and ``norm2(x)`` and its modulation before ``mlp``: three memory-bound kernels
over every token, wasted when the unit's output comes from the cache (about a
tenth of a cached 1024² image's GPU time). The re-statement below is the same
code with each unit's input built inside the unit's computation; it is
installed as an object patch of each block's ``forward`` (ComfyUI sets and
restores it with the model). It calls ComfyUI's own modules and ``t2i_modulate``,
so LoRA, weight casting and other packs' module patches still apply.

It also keeps the residual stream contiguous: ComfyUI v0.3.75 carries it in the
transposed layout of its patch embedding through every block, which makes each
LayerNorm copy its input and each residual add run a strided kernel. Only
``cross_attn`` gets the stream in ComfyUI's layout, as its ``q_linear`` rounds
differently on a contiguous input (fused bias); every value stays the same.

At each block's first call it is run beside ComfyUI's block on the same input
and must give the same tensor bit for bit; if not (a ComfyUI that changed the
block, or a layout that rounds differently), sampling stops with SelfCheckError
rather than produce a different image.
"""

from __future__ import annotations

import torch

from ..ecad_core.engine.compiling import outside_compile
from ..ecad_core.errors import SelfCheckError
from ..ecad_core.hooks import check_once, restatement_mismatch


class PixArtBlocks:
    """Re-stated block forwards for one patched PixArt model (units 3i, 3i+1, 3i+2 of block i)."""

    def __init__(self, dm, run, version: str):
        try:
            from comfy.ldm.pixart.blocks import t2i_modulate
        except ImportError as e:
            raise SelfCheckError(
                f"ECAD: ComfyUI {version} lacks the PixArt internals this adapter uses ({e})"
            ) from None
        self.modulate = t2i_modulate
        self.dm, self.run, self.version = dm, run, version
        self.stream_stride = None

    def forward_for(self, i: int):
        blk = self.dm.blocks[i]
        original = type(blk).forward
        run = self.run
        checked = [False]

        def forward(x, y, t, mask=None, HW=None, **kwargs):
            eng = run.engine
            if not eng.active_for():
                return original(blk, x, y, t, mask, HW, **kwargs)
            if i == 0:  # the layout ComfyUI's residual adds keep through every block of this call
                self.stream_stride = x.stride()
            if not checked[0]:  # every block, once per process (hooks.base: a mismatch can be data-dependent)
                check_once(
                    blk, PixArtBlocks, original, x, lambda: self._check(blk, original, x, y, t, mask, HW, kwargs)
                )
                checked[0] = True
            return self.restated(blk, 3 * i, x, y, t, mask, HW)

        forward = outside_compile(forward)
        forward.ecad_patch = True  # comfy_adapters.is_ecad_patch: a later Apply replaces it
        return forward

    def restated(self, blk, unit: int, x, y, t, mask=None, HW=None):
        """``PixArtMSBlock.forward`` (ComfyUI v0.3.75) with its three units run through the engine."""
        eng, modulate = self.run.engine, self.modulate
        # ComfyUI's PixArt hands block 0 the patch embedding as a transposed view ((B, C, N) in memory), and
        # its residual adds keep that layout through all blocks: both LayerNorms copy their input and every
        # add runs a strided kernel. Here the stream is contiguous (one copy at block 0, then a no-op); the
        # values are the same.
        x = x.contiguous()
        stream = self.stream_stride
        B = x.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            blk.scale_shift_table[None].to(dtype=x.dtype, device=x.device) + t.reshape(B, 6, -1)
        ).chunk(6, dim=1)

        def attn():
            return blk.attn(modulate(blk.norm1(x), shift_msa, scale_msa), HW=HW)

        x = x + (gate_msa * eng.call_lazy(unit, attn, (x,)))

        def cross_attn():
            # cross_attn's q_linear is the one consumer whose arithmetic depends on the layout (a non-contiguous
            # input takes matmul + bias add, a contiguous one addmm with the bias fused: other rounding on a
            # GPU), so it gets the stream in ComfyUI's own layout: the same bits as ComfyUI's block
            return blk.cross_attn(_laid_out(x, stream), y, mask)

        x = x + eng.call_lazy(unit + 1, cross_attn, (x, y))

        def mlp():
            return blk.mlp(modulate(blk.norm2(x), shift_mlp, scale_mlp))

        return x + (gate_mlp * eng.call_lazy(unit + 2, mlp, (x,)))

    def _check(self, blk, original, x, y, t, mask, HW, kwargs) -> None:
        with self.run.engine.paused():
            # ComfyUI's block as ComfyUI runs it: past block 0 the pack hands on a contiguous stream, ComfyUI
            # its own layout (the one its q_linear rounds in)
            ref = original(blk, _laid_out(x, self.stream_stride), y, t, mask, HW, **kwargs)
            mine = self.restated(blk, 0, x, y, t, mask, HW)
        why = restatement_mismatch(ref, mine)
        if why:
            raise SelfCheckError(
                f"ECAD self-check failed on ComfyUI {self.version}: the PixArt block re-statement differs from "
                f"ComfyUI's block ({why}); this ComfyUI version is not supported by this ECAD release - "
                f"refusing to produce a different image"
            )


def _laid_out(x: torch.Tensor, stride) -> torch.Tensor:
    """``x`` with the strides of ComfyUI's residual stream (None: as it is)."""
    if stride is None or x.stride() == stride or len(stride) != x.dim():
        return x
    return torch.empty_strided(x.shape, stride, dtype=x.dtype, device=x.device).copy_(x)
