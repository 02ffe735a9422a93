"""SD3 / SD3.5 on ComfyUI (``comfy.ldm.modules.diffusionmodules.mmdit.MMDiT``): per joint block the joint attention
(``attn``: both streams' q/k/v, the attention and the output projections; SD3.5 Medium's extra image
self-attention ``attn2`` rides in the same unit), the image MLP (``ff`` = ``x_block.mlp``) and the text MLP
(``ff_context`` = ``context_block.mlp``; the last block has none: group ``last_``).

The joint attention is computed inline by ``block_mixing``, so no single module's output is the unit: each block's
forward is re-stated (``block_mixing`` with its units through the engine, raw outputs before the gates), checked
against ComfyUI's own block at its first call with each new call shape (``Restatement.guarded``). A difference, or
a re-statement that cannot run, logs one warning and switches the model to ComfyUI's own blocks with the MLPs
cached at their modules (the attention then always computes).
"""

from __future__ import annotations

import logging
import sys

import torch

from ...ecad_core.costs import Arch
from ...ecad_core.errors import SelfCheckError
from ...ecad_core.hooks import restatement_mismatch
from .base import ComfyAdapter, HookPath, Restatement, Unit, comfy_version, is_ecad_patch, unit_forward

log = logging.getLogger("ecad")


class SD3Comfy(ComfyAdapter):
    family = "sd3"
    supports = "SD3/SD3.5 (MMDiT)"
    order = 40
    classes = ("comfy.ldm.modules.diffusionmodules.mmdit.MMDiT",)

    @classmethod
    def matches(cls, diffusion_model):
        blocks = getattr(diffusion_model, "joint_blocks", None)
        return super().matches(diffusion_model) and blocks is not None and len(blocks) >= 2

    def counts(self):
        return len(self.dm.joint_blocks) - 1, 1

    @property
    def arch_hint(self):
        return "sd3.5-large" if len(self.dm.joint_blocks) == 38 else "sd3-medium"

    @property
    def kind(self):
        return f"ComfyUI SD3 ({len(self.dm.joint_blocks)} joint blocks)"

    def units(self):
        n = len(self.dm.joint_blocks)
        out = []
        for i in range(n):
            b = f"joint_blocks.{i}"
            out += [Unit(b, "attn", None), Unit(b, "ff", f"{b}.x_block.mlp")]
            if i < n - 1:
                out.append(Unit(b, "ff_context", f"{b}.context_block.mlp"))
        return out

    def arch(self, name):
        dm = self.dm
        blocks = dm.joint_blocks
        if any(b.x_block.x_block_self_attn for b in blocks) or int(getattr(dm, "register_length", 0)):
            return None  # SD3.5 Medium's dual attention: not in the cost model (uniform costs)
        hidden = int(dm.hidden_size)
        y = getattr(dm, "y_embedder", None)
        ctx = getattr(dm, "context_embedder", None)
        return Arch.custom(
            "sd3",
            name=name,
            hidden=hidden,
            heads=int(blocks[0].x_block.attn.num_heads),
            depth=len(blocks) - 1,
            single_depth=1,
            mlp_ratio=int(blocks[0].x_block.mlp.fc1.weight.shape[0]) / hidden,
            patch=int(dm.patch_size),
            latent_channels=int(dm.in_channels),
            out_channels=int(dm.out_channels),
            caption_channels=int(ctx.weight.shape[1]) if isinstance(ctx, torch.nn.Linear) else 4096,
            pooled_dim=int(y.mlp[0].weight.shape[1]) if y is not None else 0,
        )

    def install(self, mp, run):
        dm = self.dm
        why = next(
            (f"joint_blocks.{i} {w}" for i, b in enumerate(dm.joint_blocks) if (w := SD3Restatement.unfit(b))), None
        )
        path = run.hook_path = HookPath("SD3", "ComfyUI's blocks, MLPs cached at their modules")
        if why:
            path.switch_off(why)
        blocks = SD3Restatement(dm, run, path)
        taken = getattr(mp, "object_patches", {})
        units = self.units()
        first = {}
        for k, u in enumerate(units):
            first.setdefault(u.block, k)
        for i in range(len(dm.joint_blocks)):
            key = f"diffusion_model.joint_blocks.{i}.forward"
            if why is None and (key not in taken or is_ecad_patch(taken[key])):
                mp.add_object_patch(key, blocks.forward_for(i, first[f"joint_blocks.{i}"]))
        # the MLPs at their modules: dormant while the re-statement runs
        for k, u in enumerate(units):
            if u.path is None:
                continue
            mkey = f"diffusion_model.{u.path}.forward"
            inner = taken.get(mkey)
            mp.add_object_patch(
                mkey,
                unit_forward(
                    dm.get_submodule(u.path),
                    run,
                    k,
                    None if inner is None or is_ecad_patch(inner) else inner,
                    when=lambda: path.off is not None,
                ),
            )


class SD3Restatement(Restatement):
    """``block_mixing`` (ComfyUI v0.3.75 / 0.33) of one joint block with its units through the engine."""

    @classmethod
    def unfit(cls, block):
        for side in ("context_block", "x_block"):
            b = getattr(block, side, None)
            if b is None or getattr(b, "scale_mod_only", True):
                return f"has no {side} with full adaLN modulation"
            if not hasattr(b, "attn") or not hasattr(b.attn, "pre_attention"):
                return f"{side} has no attention with pre_attention"
        if block.context_block.pre_only is False and not isinstance(
            getattr(block.context_block, "mlp", None), torch.nn.Module
        ):
            return "context_block has no mlp"
        if not isinstance(getattr(block.x_block, "mlp", None), torch.nn.Module) or block.x_block.pre_only:
            return "x_block has no mlp"
        return None

    def helpers(self, blk):
        mod = sys.modules.get(type(blk).__module__)
        names = ("optimized_attention", "modulate", "gate_cat")
        found = {n: getattr(mod, n, None) for n in names}
        missing = [n for n, f in found.items() if f is None]
        if missing:
            raise SelfCheckError(f"ComfyUI {comfy_version()}'s mmdit lacks {', '.join(missing)}")
        return found

    def forward_for(self, i: int, unit: int):
        blk = self.dm.joint_blocks[i]
        original = type(blk).forward

        def call_original(*args, **kwargs):
            return original(blk, *args, **kwargs)

        def body(context, x, c=None, transformer_options={}, **kwargs):  # noqa: B006 - ComfyUI's own default
            return self.restated(blk, unit, context, x, c, transformer_options)

        def check(context, x, c=None, transformer_options={}, **kwargs):  # noqa: B006
            with self.run.engine.paused():
                ref = original(blk, context, x, c=c, transformer_options=transformer_options, **kwargs)
                mine = self.restated(blk, unit, context, x, c, transformer_options)
            if ref[0] is None and mine[0] is None:  # the last block: no text stream out
                ref, mine = ref[1], mine[1]
            why = restatement_mismatch(ref, mine)
            if why:
                raise SelfCheckError(f"{self.where(blk)} differs from ComfyUI's block ({why})")

        return self.guarded(blk, call_original, body, check, call_original)

    def restated(self, blk, unit, context, x, c, transformer_options):
        h = self.helpers(blk)
        attention, modulate, gate_cat = h["optimized_attention"], h["modulate"], h["gate_cat"]
        eng = self.run.engine
        cb, xb = blk.context_block, blk.x_block
        if cb.pre_only:
            c_shift_msa, c_scale_msa = cb.adaLN_modulation(c).chunk(2, dim=1)
        else:
            c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = cb.adaLN_modulation(c).chunk(
                6, dim=1
            )
        dual = xb.x_block_self_attn
        xm = xb.adaLN_modulation(c).chunk(9 if dual else 6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = xm[:6]

        def attn():
            cqkv = cb.attn.pre_attention(modulate(cb.norm1(context), c_shift_msa, c_scale_msa))
            x_norm = xb.norm1(x)
            xqkv = xb.attn.pre_attention(modulate(x_norm, shift_msa, scale_msa))
            qkv = [torch.cat((cqkv[t], xqkv[t]), dim=1) for t in range(3)]
            a = attention(qkv[0], qkv[1], qkv[2], heads=xb.attn.num_heads, transformer_options=transformer_options)
            n_ctx = cqkv[0].shape[1]
            out_c = None if cb.pre_only else cb.attn.post_attention(a[:, :n_ctx])
            out_x = xb.attn.post_attention(a[:, n_ctx:])
            if not dual:
                return out_c, out_x
            qkv2 = xb.attn2.pre_attention(modulate(x_norm, xm[6], xm[7]))
            a2 = attention(qkv2[0], qkv2[1], qkv2[2], heads=xb.attn2.num_heads, transformer_options=transformer_options)
            return out_c, out_x, xb.attn2.post_attention(a2)

        outs = eng.call_lazy(unit, attn, (context, x))
        if dual:
            x = gate_cat(x, gate_msa, xm[8], outs[1], outs[2])
        else:
            x = x + gate_msa.unsqueeze(1) * outs[1]
        x = x + gate_mlp.unsqueeze(1) * eng.call_lazy(
            unit + 1, lambda: xb.mlp(modulate(xb.norm2(x), shift_mlp, scale_mlp)), (x,)
        )
        if cb.pre_only:
            return None, x
        context = context + c_gate_msa.unsqueeze(1) * outs[0]
        context = context + c_gate_mlp.unsqueeze(1) * eng.call_lazy(
            unit + 2, lambda: cb.mlp(modulate(cb.norm2(context), c_shift_mlp, c_scale_mlp)), (context,)
        )
        return context, x
