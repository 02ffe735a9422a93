"""Qwen-Image / Qwen-Image-Edit on diffusers (``QwenImageTransformer2DModel``): each ``transformer_blocks[i]`` has
the units ``attn`` (the joint attention, returning the image and text outputs), ``img_mlp`` and ``txt_mlp``, hooked
at their modules (raw outputs: the block applies the gates and residuals)."""

from __future__ import annotations

from .base import BlockGroupSpec, DiffusersAdapter


class QwenImageDiffusers(DiffusersAdapter):
    family = "qwen_image"
    supports = "QwenImageTransformer2DModel (Qwen-Image, Qwen-Image-Edit)"
    order = 30
    groups = (
        BlockGroupSpec(
            "transformer_blocks", "qwen_image", (("attn", "attn"), ("img_mlp", "img_mlp"), ("txt_mlp", "txt_mlp"))
        ),
    )

    @classmethod
    def matches(cls, transformer):
        return type(transformer).__name__ == "QwenImageTransformer2DModel"

    def variant_of(self, pipe):
        name = type(pipe).__name__
        if not name.startswith("QwenImage"):
            return None
        return "qwen-image-edit" if "Edit" in name else "qwen-image"
