"""PixArt-α/Σ on ComfyUI (``comfy.ldm.pixart.pixartms.PixArtMS``): units ``attn``, ``cross_attn`` and ``mlp`` of
every block, served by a re-statement of the block.

No block hook exists, so each block's ``forward`` is replaced through ``ModelPatcher.add_object_patch``
(ComfyUI sets and restores it with the model). ``PixArtMSBlock.forward`` computes ``norm1(x)`` and its
modulation before ``attn`` and ``norm2(x)`` and its modulation before ``mlp``: three memory-bound kernels over
every token, wasted when the unit's output comes from the cache (about a tenth of a cached 1024² image's GPU
time). The re-statement is the same code with each unit's input built inside the unit's computation. It calls
ComfyUI's own modules and ``t2i_modulate``, so LoRA, weight casting and other packs' module patches still apply.
Where another node already patched a block's ``forward``, that block's component modules are wrapped instead.

It also keeps the residual stream contiguous: ComfyUI v0.3.75 carries it in the transposed layout of its patch
embedding through every block, which makes each LayerNorm copy its input and each residual add run a strided
kernel. Only ``cross_attn`` gets the stream in ComfyUI's layout, as its ``q_linear`` rounds differently on a
contiguous input (fused bias); every value stays the same.

At each block's first call with a new call shape it is run beside ComfyUI's block on the same input and must give
the same tensor bit for bit. If not (a ComfyUI that changed the block, a kernel that rounds differently, a layout
that rounds differently), one warning is logged and the model switches to caching the component modules for that
call and every later one: ComfyUI's own block runs, its ``attn`` / ``cross_attn`` / ``mlp`` through the engine (the
same ECAD semantics, the reused units' norm + modulation no longer skipped). Should the blocks stop calling those
modules, the model runs uncached (with a warning) rather than fail or change the image.
"""

from __future__ import annotations

import logging
import sys

import torch

from ...ecad_core.costs import Arch
from ...ecad_core.errors import ModelMismatchError, SelfCheckError
from ...ecad_core.hooks import restatement_mismatch
from .base import ComfyAdapter, HookPath, Restatement, Unit, comfy_version, is_ecad_patch

log = logging.getLogger("ecad")
# (layout component, ComfyUI submodule of the block)
UNITS = (("attn1", "attn"), ("attn2", "cross_attn"), ("ff", "mlp"))


class PixArtComfy(ComfyAdapter):
    family = "pixart"
    supports = "PixArt-α/Σ"
    order = 10
    classes = ("comfy.ldm.pixart.pixartms.PixArtMS",)
    units_timeable = True
    graph_kwargs = ("context", "c_size", "c_ar")  # PixArtMS.forward(x, timesteps, context, c_size, c_ar, **ignored)

    def __init__(self, dm):
        super().__init__(dm)
        if getattr(dm, "pe_interpolation", None) == 0 and getattr(dm, "pe_precision", None) is None:
            # ComfyUI guesses pe_interpolation = input_size // 64 from a stored pos_embed: 0 for 256 px
            # checkpoints (PixArt-XL-2-256x256); the positional embedding then divides by zero and every image
            # is NaN (black)
            raise ModelMismatchError(
                f"ECAD: ComfyUI {comfy_version()} loaded this PixArt checkpoint with pe_interpolation 0 (its stored "
                "pos_embed is for 256 px, and ComfyUI's guess input_size // 64 rounds to 0), so its positional "
                "embedding divides by zero and every image comes out NaN/black, with or without ECAD. ECAD refuses "
                "to cache a model that cannot produce an image: use a PixArt checkpoint for 512 px or 1024 px (the "
                "256 px presets transfer across sizes)"
            )

    def counts(self):
        return (len(self.dm.blocks),)

    @property
    def arch_hint(self):
        return "pixart-alpha" if getattr(self.dm, "micro_conditioning", False) else "pixart-sigma"

    @property
    def kind(self):
        return f"ComfyUI PixArt ({self.arch_hint}, {len(self.dm.blocks)} blocks)"

    def units(self):
        return [
            Unit(f"blocks.{i}", comp, f"blocks.{i}.{attr}") for i in range(len(self.dm.blocks)) for comp, attr in UNITS
        ]

    def arch(self, name):
        dm = self.dm
        blk = dm.blocks[0]
        hidden = int(dm.hidden_size)
        return Arch.custom(
            "pixart",
            name=name,
            hidden=hidden,
            heads=int(dm.num_heads),
            depth=len(dm.blocks),
            mlp_ratio=int(blk.mlp.fc1.weight.shape[0]) / hidden,
            patch=int(dm.patch_size),
            latent_channels=int(dm.in_channels),
            out_channels=int(dm.out_channels),
            caption_channels=int(dm.y_embedder.y_proj.fc1.weight.shape[1]),
            micro_conditioning=bool(getattr(dm, "micro_conditioning", False)),
        )

    def graph_prepare(self, args, kwargs):
        """PixArt-α's fallback size/aspect conditioning, made before the forward (as PixArtMS.forward makes it)
        so that a CUDA-graph capture does not copy host data; the model then sees the same tensors."""
        if not getattr(self.dm, "micro_conditioning", False) or not args:
            return args, kwargs
        if kwargs.get("c_size") is not None and kwargs.get("c_ar") is not None:
            return args, kwargs
        x = args[0]
        B, _, H, W = x.shape
        kwargs = dict(kwargs)
        if kwargs.get("c_size") is None:
            kwargs["c_size"] = torch.tensor([H * 8, W * 8], dtype=x.dtype, device=x.device).repeat(B, 1)
        if kwargs.get("c_ar") is None:
            kwargs["c_ar"] = torch.tensor([H / W], dtype=x.dtype, device=x.device).repeat(B, 1)
        return args, kwargs

    def install(self, mp, run):
        dm = self.dm
        why = next((f"blocks.{i} {w}" for i, b in enumerate(dm.blocks) if (w := PixArtRestatement.unfit(b))), None)
        blocks = None
        if why is None:
            try:
                blocks = PixArtRestatement(dm, run, HookPath("PixArt", "module caching"))
            except SelfCheckError as e:
                why = str(e)
        if blocks is None:
            run.hook_path = self.install_fallback(mp, run, "PixArt", why or "")
            n = 3 * len(dm.blocks)
        else:
            run.hook_path = blocks.path
            n = self._install_restatement(mp, run, blocks)

        def check_units_ran():
            # every unit must have been called at step 0, else the block no longer calls these modules: the rest
            # runs uncached (step 0 computed everything, so this image is ComfyUI's own)
            ran = int(run.engine.stats.computed[0])
            if ran < n and run.engine.enabled:
                run.engine.enabled = False
                log.warning(
                    "ECAD: PixArt on ComfyUI %s: no cache (its blocks did not call their attn/cross_attn/mlp "
                    "modules as expected: %d of %d units ran)",
                    comfy_version(),
                    ran,
                    n,
                )

        run.first_eval_checks.append(check_units_ran)

        def check_size(latent):
            # ComfyUI's PixArt: base_size = round(((H + W) // 2) / 64) * 64 // patch in latent pixels (and
            # pe_interpolation, when computed, the same round): 0 when (H + W) // 2 <= 32 latent pixels, i.e.
            # (W + H) / 2 below 264 px, where it raises ZeroDivisionError deep in its positional embedding
            if getattr(latent, "ndim", 0) == 4 and round(((latent.shape[-2] + latent.shape[-1]) // 2) / 64) == 0:
                h, w = latent.shape[-2] * 8, latent.shape[-1] * 8
                raise ModelMismatchError(
                    f"ECAD: ComfyUI {comfy_version()}'s PixArt cannot sample {w}x{h}: its positional embedding "
                    f"needs (width + height) / 2 >= 264 px (it divides by zero below, with or without ECAD); "
                    f"use e.g. 320x320 or 512x512 (the 256 px ECAD presets transfer across sizes)"
                )

        run.pre_run_checks.append(check_size)

    def _install_restatement(self, mp, run, blocks) -> int:
        """Each block's forward re-stated; its component modules cached in its place once the re-statement is
        switched off (a failed check), and from the start where another node already patched the block."""
        taken = getattr(mp, "object_patches", {})
        n, own = 0, set()
        for i in range(len(self.dm.blocks)):
            key = f"diffusion_model.blocks.{i}.forward"
            # the block re-statement (an earlier ECAD Apply's is not another node's: this one replaces it)
            if key not in taken or is_ecad_patch(taken[key]):
                mp.add_object_patch(key, blocks.forward_for(i))
                own.add(f"blocks.{i}")
                continue
            # another node replaced this block's forward: keep it, and cache at the component modules
            log.info(
                "ECAD: PixArt block %d's forward is already patched by another node; caching its "
                "attn/cross_attn/mlp modules instead",
                i,
            )
            n += self.install_modules(mp, run, blocks={f"blocks.{i}"})
        path = blocks.path
        return n + self.install_modules(mp, run, blocks=own, when=lambda: path.off is not None)


class PixArtRestatement(Restatement):
    """Re-stated block forwards for one patched PixArt model (units 3i, 3i+1, 3i+2 of block i)."""

    def __init__(self, dm, run, path):
        super().__init__(dm, run, path)
        self.version = comfy_version()
        try:
            from comfy.ldm.pixart.blocks import t2i_modulate
        except ImportError as e:
            raise SelfCheckError(f"ComfyUI {self.version} lacks the PixArt internals this adapter uses ({e})") from None
        self.t2i_modulate = t2i_modulate
        self.stream_stride = None

    def modulate(self, blk):
        """The modulation the block's own module calls (looked up per call, so it follows ComfyUI's kernel)."""
        return getattr(sys.modules.get(type(blk).__module__), "t2i_modulate", None) or self.t2i_modulate

    @classmethod
    def unfit(cls, block):
        for _, attr in UNITS:
            if not isinstance(getattr(block, attr, None), torch.nn.Module):
                return f"has no '{attr}' module"
        for attr in ("norm1", "norm2", "scale_shift_table"):
            if getattr(block, attr, None) is None:
                return f"has no '{attr}'"
        return None

    def forward_for(self, i: int):
        blk = self.dm.blocks[i]
        original = type(blk).forward

        def note_stream(x):
            if i == 0:  # the layout ComfyUI's residual adds keep through every block of this call
                self.stream_stride = x.stride()

        def body(x, y, t, mask=None, HW=None, **kwargs):
            note_stream(x)  # arguments the re-statement does not take were checked to change nothing
            return self.restated(blk, 3 * i, x, y, t, mask, HW)

        def check(x, y, t, mask=None, HW=None, **kwargs):
            note_stream(x)
            self.check(blk, original, x, y, t, mask, HW, kwargs)

        def fallback(x, y, t, mask=None, HW=None, **kwargs):
            # ComfyUI's block, its modules through the engine; the stream as ComfyUI lays it out (an earlier
            # block of this call may have been re-stated)
            return original(blk, _laid_out(x, self.stream_stride), y, t, mask, HW, **kwargs)

        return self.guarded(
            blk,
            lambda x, y, t, mask=None, HW=None, **kwargs: original(blk, x, y, t, mask, HW, **kwargs),
            body,
            check,
            fallback,
        )

    def restated(self, blk, unit: int, x, y, t, mask=None, HW=None):
        """``PixArtMSBlock.forward`` (ComfyUI v0.3.75) with its three units run through the engine."""
        eng, modulate = self.run.engine, self.modulate(blk)
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

    def check(self, blk, original, x, y, t, mask, HW, kwargs) -> None:
        with self.run.engine.paused():
            # ComfyUI's block as ComfyUI runs it: past block 0 the pack hands on a contiguous stream, ComfyUI
            # its own layout (the one its q_linear rounds in)
            ref = original(blk, _laid_out(x, self.stream_stride), y, t, mask, HW, **kwargs)
            mine = self.restated(blk, 0, x, y, t, mask, HW)
        why = restatement_mismatch(ref, mine)
        if why:
            raise SelfCheckError(f"{self.where(blk)} differs from ComfyUI's block ({why})")


def _laid_out(x: torch.Tensor, stride) -> torch.Tensor:
    """``x`` with the strides of ComfyUI's residual stream (None: as it is)."""
    if stride is None or x.stride() == stride or len(stride) != x.dim():
        return x
    return torch.empty_strided(x.shape, stride, dtype=x.dtype, device=x.device).copy_(x)
