"""FLUX.1 on diffusers (``FluxTransformer2DModel``; Chroma's adapter reuses it): double blocks
``transformer_blocks[i]`` (``attn``, ``ff``, ``ff_context``) and single blocks ``single_transformer_blocks[j]``
(``attn``, ``proj_mlp``, ``proj_out``).

The blocks (``FluxTransformerBlock``, ``FluxSingleTransformerBlock``, diffusers 0.35+) are re-stated so
that a reused unit's input is not built.

A module-output cache serves a reused unit's output but the block still runs the
norms and modulations that feed it and, in a single block, the activation and
concatenation that feed ``proj_out``: a dozen memory-bound kernels per fully
reused block. Here each of them runs inside the unit that needs it. The adaLN
linear layers run on every call (their gates are always fresh).
"""

from __future__ import annotations

import torch

from ...hooks.base import BlockHook, missing_attr
from .base import BlockGroupSpec, DiffusersAdapter

_PARAMETERS = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb", "joint_attention_kwargs")


def _unfit_ada_norm(block, attr: str) -> str | None:
    n = getattr(block, attr, None)
    if (
        n is None
        or getattr(n, "emb", None) is not None
        or not all(isinstance(getattr(n, a, None), torch.nn.Module) for a in ("silu", "linear", "norm"))
    ):
        return f"{attr} is not a plain AdaLayerNormZero"
    return None


class FluxDoubleBlockHook(BlockHook):
    """Units ``unit`` .. ``unit + 2`` (full_attn = ``attn``, full_ff = ``ff``, full_ff_context = ``ff_context``)."""

    FAMILY = "FLUX double"
    PARAMETERS = _PARAMETERS
    BYPASSED = ("norm1", "norm1_context")

    @classmethod
    def _unfit(cls, block: torch.nn.Module) -> str | None:
        return (
            missing_attr(block, ("attn", "norm2", "ff", "norm2_context", "ff_context"))
            or _unfit_ada_norm(block, "norm1")
            or _unfit_ada_norm(block, "norm1_context")
        )

    def _restated(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
        """``FluxTransformerBlock.forward`` (diffusers 0.35-0.42) with its units through the engine."""
        blk, eng, unit = self.module, self.engine, self.unit
        n1, n1c = blk.norm1, blk.norm1_context
        # AdaLayerNormZero.forward, its norm + modulation moved into the attention unit
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = n1.linear(n1.silu(temb)).chunk(6, dim=1)
        (c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp) = n1c.linear(n1c.silu(temb)).chunk(
            6, dim=1
        )
        joint_attention_kwargs = joint_attention_kwargs or {}

        def attn():
            norm_hidden_states = n1.norm(hidden_states) * (1 + scale_msa[:, None]) + shift_msa[:, None]
            norm_encoder_hidden_states = (
                n1c.norm(encoder_hidden_states) * (1 + c_scale_msa[:, None]) + c_shift_msa[:, None]
            )
            return blk.attn(
                hidden_states=norm_hidden_states,
                encoder_hidden_states=norm_encoder_hidden_states,
                image_rotary_emb=image_rotary_emb,
                **joint_attention_kwargs,
            )

        attention_outputs = eng.call_lazy(unit, attn, (hidden_states, encoder_hidden_states))
        if len(attention_outputs) == 2:
            attn_output, context_attn_output = attention_outputs
        elif len(attention_outputs) == 3:
            attn_output, context_attn_output, ip_attn_output = attention_outputs

        attn_output = gate_msa.unsqueeze(1) * attn_output
        hidden_states = hidden_states + attn_output

        def ff():
            norm_hidden_states = blk.norm2(hidden_states)
            norm_hidden_states = norm_hidden_states * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            return blk.ff(norm_hidden_states)

        ff_output = gate_mlp.unsqueeze(1) * eng.call_lazy(unit + 1, ff, (hidden_states,))
        hidden_states = hidden_states + ff_output
        if len(attention_outputs) == 3:
            hidden_states = hidden_states + ip_attn_output

        context_attn_output = c_gate_msa.unsqueeze(1) * context_attn_output
        encoder_hidden_states = encoder_hidden_states + context_attn_output

        def ff_context():
            norm_encoder_hidden_states = blk.norm2_context(encoder_hidden_states)
            norm_encoder_hidden_states = norm_encoder_hidden_states * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
            return blk.ff_context(norm_encoder_hidden_states)

        context_ff_output = eng.call_lazy(unit + 2, ff_context, (encoder_hidden_states,))
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * context_ff_output
        if encoder_hidden_states.dtype == torch.float16:
            encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
        return encoder_hidden_states, hidden_states


class FluxSingleBlockHook(BlockHook):
    """Units ``unit`` .. ``unit + 2`` (single_attn = ``attn``, single_proj_mlp = ``proj_mlp``,
    single_proj_out = ``proj_out``)."""

    FAMILY = "FLUX single"
    PARAMETERS = _PARAMETERS
    BYPASSED = ("norm",)

    @classmethod
    def _unfit(cls, block: torch.nn.Module) -> str | None:
        return missing_attr(block, ("attn", "proj_mlp", "act_mlp", "proj_out")) or _unfit_ada_norm(block, "norm")

    def _restated(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
        """``FluxSingleTransformerBlock.forward`` (diffusers 0.35-0.42) with its units through the engine."""
        blk, eng, unit = self.module, self.engine, self.unit
        text_seq_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        residual = hidden_states
        n = blk.norm
        # AdaLayerNormZeroSingle.forward, its norm + modulation built once and only for a computed attn / proj_mlp
        shift_msa, scale_msa, gate = n.linear(n.silu(temb)).chunk(3, dim=1)
        normed: list = []

        def norm_hidden_states():
            if not normed:
                normed.append(n.norm(hidden_states) * (1 + scale_msa[:, None]) + shift_msa[:, None])
            return normed[0]

        joint_attention_kwargs = joint_attention_kwargs or {}
        mlp_hidden_states = eng.call_lazy(unit + 1, lambda: blk.proj_mlp(norm_hidden_states()), (hidden_states,))
        attn_output = eng.call_lazy(
            unit,
            lambda: blk.attn(
                hidden_states=norm_hidden_states(), image_rotary_emb=image_rotary_emb, **joint_attention_kwargs
            ),
            (hidden_states,),
        )
        # the activation and the concatenation feed proj_out only
        proj = eng.call_lazy(
            unit + 2,
            lambda: blk.proj_out(torch.cat([attn_output, blk.act_mlp(mlp_hidden_states)], dim=2)),
            (hidden_states,),
        )
        hidden_states = gate.unsqueeze(1) * proj
        hidden_states = residual + hidden_states
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        encoder_hidden_states, hidden_states = hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]
        return encoder_hidden_states, hidden_states


class FluxDiffusers(DiffusersAdapter):
    family = "flux"
    supports = "FluxTransformer2DModel (FLUX.1)"
    order = 10
    groups = (
        BlockGroupSpec(
            "transformer_blocks",
            "flux_double",
            (("full_attn", "attn"), ("full_ff", "ff"), ("full_ff_context", "ff_context")),
            FluxDoubleBlockHook,
        ),
        BlockGroupSpec(
            "single_transformer_blocks",
            "flux_single",
            (("single_attn", "attn"), ("single_proj_mlp", "proj_mlp"), ("single_proj_out", "proj_out")),
            FluxSingleBlockHook,
        ),
    )

    @classmethod
    def matches(cls, transformer):
        if cls is FluxDiffusers and type(transformer).__name__.startswith(("Chroma", "Flux2")):
            return False  # FLUX-class, not FLUX.1 (Chroma: chroma.py; FLUX.2: no diffusers adapter yet)
        return hasattr(transformer, "single_transformer_blocks") and hasattr(transformer, "transformer_blocks")

    def variant_of(self, pipe):
        if not type(pipe).__name__.startswith("Flux"):
            return None
        return "flux-dev" if getattr(self.transformer.config, "guidance_embeds", False) else "flux-schnell"

    def text_tokens(self, pipe, extra=None):
        if type(pipe).__name__.startswith("Flux") and extra:
            return extra.get("max_sequence_length")
        return None
