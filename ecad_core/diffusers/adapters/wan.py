"""Wan 2.1 / 2.2 on diffusers (``WanTransformer3DModel``): each ``blocks[i]`` has the units ``self_attn`` (its
``attn1``), ``cross_attn`` (``attn2``) and ``ffn``, each hooked at its module (their raw outputs: the block applies
the gates and residual adds outside them). No block re-statement."""

from __future__ import annotations

from .base import BlockGroupSpec, DiffusersAdapter

VARIANTS = {(1536, 30, 16): "wan2.1-t2v-1.3b", (5120, 40, 16): "wan2.1-t2v-14b", (3072, 30, 48): "wan2.2-ti2v-5b"}


class WanDiffusers(DiffusersAdapter):
    family = "wan"
    supports = "WanTransformer3DModel (Wan 2.1/2.2)"
    order = 40
    groups = (BlockGroupSpec("blocks", "wan", (("self_attn", "attn1"), ("cross_attn", "attn2"), ("ffn", "ffn"))),)

    @classmethod
    def matches(cls, transformer):
        return type(transformer).__name__ == "WanTransformer3DModel"

    def variant_of(self, pipe):
        c = getattr(self.transformer, "config", {})
        try:
            dim = int(c["num_attention_heads"]) * int(c["attention_head_dim"])
            return VARIANTS.get((dim, int(c["num_layers"]), int(c["out_channels"])))
        except (KeyError, TypeError, ValueError):
            return None

    def text_tokens(self, pipe, extra=None):
        return 512  # the Wan pipelines pad umT5 prompts to 512 tokens
