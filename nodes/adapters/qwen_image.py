"""Qwen-Image and Qwen-Image-Edit on ComfyUI (``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``): per
block the joint attention (``attn``: both streams' q/k/v, the attention and both output projections in one module,
returning the image and text outputs), the image feed-forward (``img_mlp``) and the text feed-forward
(``txt_mlp``). Each is a module whose output is the raw unit output (gates and residuals are applied by the block),
so the inherited ``install`` caches them at their modules (ECAD's semantics, no re-statement). Edit's reference
latents are image tokens like the others: their units are cached with them (the signature includes the length)."""

from __future__ import annotations

from ...ecad_core.costs import Arch
from .base import ComfyAdapter, Unit

COMPONENTS = ("attn", "img_mlp", "txt_mlp")


class QwenImageComfy(ComfyAdapter):
    family = "qwen_image"
    supports = "Qwen-Image (incl. Edit)"
    order = 30
    classes = ("comfy.ldm.qwen_image.model.QwenImageTransformer2DModel",)
    units_timeable = True

    @classmethod
    def matches(cls, diffusion_model):
        return super().matches(diffusion_model) and hasattr(diffusion_model, "transformer_blocks")

    def counts(self):
        return (len(self.dm.transformer_blocks),)

    @property
    def arch_hint(self):
        return "qwen-image"

    @property
    def kind(self):
        return f"ComfyUI Qwen-Image ({self.counts()[0]} blocks)"

    def units(self):
        return [
            Unit(f"transformer_blocks.{i}", comp, f"transformer_blocks.{i}.{comp}")
            for i in range(self.counts()[0])
            for comp in COMPONENTS
        ]

    def arch(self, name):
        dm = self.dm
        patch = int(dm.patch_size)
        hidden = int(dm.inner_dim)
        blk = dm.transformer_blocks[0]
        return Arch.custom(
            "qwen_image",
            name=name,
            hidden=hidden,
            heads=int(blk.attn.heads),
            depth=len(dm.transformer_blocks),
            mlp_ratio=blk.img_mlp.net[0].proj.out_features / hidden,
            patch=patch,
            latent_channels=int(dm.img_in.weight.shape[1]) // patch**2,
            out_channels=int(dm.out_channels),
            caption_channels=int(dm.txt_in.weight.shape[1]),
        )
