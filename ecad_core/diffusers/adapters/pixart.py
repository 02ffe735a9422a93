"""PixArt-α/Σ on diffusers (``PixArtTransformer2DModel``): each ``transformer_blocks[i]`` has the units
``attn1``, ``attn2`` and ``ff``, served together by ``PixArtBlockHook``: the block
(``BasicTransformerBlock`` with ``norm_type="ada_norm_single"``) re-stated so that the norm + modulation feeding
``attn1`` / ``ff`` run only when that unit computes."""

from __future__ import annotations

import torch

from ...hooks.base import BlockHook, missing_attr
from .base import BlockGroupSpec, DiffusersAdapter


class PixArtBlockHook(BlockHook):
    """Serves units ``unit`` .. ``unit + 2`` (attn1, attn2, ff) of one diffusers PixArt block from the engine."""

    FAMILY = "PixArt"
    PARAMETERS = (
        "hidden_states",
        "attention_mask",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "timestep",
        "cross_attention_kwargs",
        "class_labels",
        "added_cond_kwargs",
    )

    @classmethod
    def _unfit(cls, block: torch.nn.Module) -> str | None:
        why = missing_attr(block, ("scale_shift_table", "norm1", "norm2", "attn1", "attn2", "ff"))
        if why:
            return why
        if getattr(block, "norm_type", None) != "ada_norm_single":
            return f"norm_type {getattr(block, 'norm_type', None)!r}"
        if getattr(block, "pos_embed", None) is not None or getattr(block, "only_cross_attention", False):
            return "positional embedding or cross-attention only"
        if getattr(block, "_chunk_size", None) is not None:
            return "chunked feed-forward"
        return None

    def _restated(
        self,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        timestep=None,
        cross_attention_kwargs=None,
        class_labels=None,
        added_cond_kwargs=None,
    ):
        """``BasicTransformerBlock.forward`` (diffusers 0.3x-0.4x) for PixArt, with its units through the engine."""
        blk, eng, unit = self.module, self.engine, self.unit
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            blk.scale_shift_table[None] + timestep.reshape(hidden_states.shape[0], 6, -1)
        ).chunk(6, dim=1)
        cross_attention_kwargs = cross_attention_kwargs.copy() if cross_attention_kwargs is not None else {}
        gligen_kwargs = cross_attention_kwargs.pop("gligen", None)
        mask = {"attention_mask": attention_mask}

        def attn1():
            norm_hidden_states = blk.norm1(hidden_states)
            norm_hidden_states = norm_hidden_states * (1 + scale_msa) + shift_msa
            return blk.attn1(
                norm_hidden_states, encoder_hidden_states=None, attention_mask=attention_mask, **cross_attention_kwargs
            )

        attn_output = gate_msa * eng.call_lazy(unit, attn1, (hidden_states,), mask)
        hidden_states = attn_output + hidden_states
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.squeeze(1)
        if gligen_kwargs is not None:
            hidden_states = blk.fuser(hidden_states, gligen_kwargs["objs"])

        def attn2():
            return blk.attn2(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                **cross_attention_kwargs,
            )

        hidden_states = (
            eng.call_lazy(
                unit + 1, attn2, (hidden_states, encoder_hidden_states), {"attention_mask": encoder_attention_mask}
            )
            + hidden_states
        )

        def ff():
            norm_hidden_states = blk.norm2(hidden_states)
            norm_hidden_states = norm_hidden_states * (1 + scale_mlp) + shift_mlp
            return blk.ff(norm_hidden_states)

        hidden_states = gate_mlp * eng.call_lazy(unit + 2, ff, (hidden_states,)) + hidden_states
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.squeeze(1)
        return hidden_states


class PixArtDiffusers(DiffusersAdapter):
    family = "pixart"
    supports = "PixArtTransformer2DModel (PixArt-α/Σ)"
    order = 20  # after FLUX, whose transformers also have transformer_blocks
    groups = (
        BlockGroupSpec(
            "transformer_blocks", "pixart", (("attn1", "attn1"), ("attn2", "attn2"), ("ff", "ff")), PixArtBlockHook
        ),
    )

    @classmethod
    def matches(cls, transformer):
        cfg = getattr(transformer, "config", None)
        norm_type = getattr(cfg, "norm_type", None) if cfg is not None else None
        return hasattr(transformer, "transformer_blocks") and (
            type(transformer).__name__ == "PixArtTransformer2DModel" or norm_type == "ada_norm_single"
        )

    def variant_of(self, pipe):
        k = type(pipe).__name__
        if k.startswith("PixArtAlpha"):
            return "pixart-alpha"
        if k.startswith("PixArtSigma"):
            return "pixart-sigma"
        return None

    def text_tokens(self, pipe, extra=None):
        return 300 if type(pipe).__name__.startswith("PixArtSigma") else None  # Σ pads prompts to 300, α to 120
