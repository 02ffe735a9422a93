"""HunyuanVideo 1.5 on ComfyUI (``comfy.ldm.hunyuan_video.model.HunyuanVideo`` built with 1.5's vision projection
and condition-type embedding): ComfyUI's FLUX.1 double (and single) stream blocks over video and text tokens, so
FLUX's units, block re-statements (checked against ComfyUI's block at each new call shape) and module-level
fallback serve it (``flux.py``); its own layout and cost model (token refiner, 16-pixel latent, patch 1).

Each cached output holds every latent frame's tokens. HunyuanVideo 1.0 (no vision projection) stays at block
level (``dit_blocks``)."""

from __future__ import annotations

import math

from .flux import FluxComfy


class HunyuanVideo15Comfy(FluxComfy):
    family = "hunyuan_video15"
    supports = "HunyuanVideo 1.5"
    order = 45
    classes = ("comfy.ldm.hunyuan_video.model.HunyuanVideo",)
    excludes = ()

    @classmethod
    def matches(cls, diffusion_model):
        return (
            super().matches(diffusion_model)
            and getattr(diffusion_model, "vision_in", None) is not None
            and getattr(diffusion_model, "cond_type_embedding", None) is not None
        )

    @property
    def arch_hint(self):
        return "hunyuanvideo-1.5"

    @property
    def kind(self):
        nd, ns = self.counts()
        return f"ComfyUI HunyuanVideo 1.5 ({nd} double{f' + {ns} single' if ns else ''} blocks)"

    def arch(self, name):
        dm = self.dm
        p = dm.params
        patch = [int(n) for n in p.patch_size]
        if patch[1:] != [patch[-1]] * 2 or patch[0] != 1:  # the cost model counts square patches, one frame deep
            return None
        return self.custom_arch(
            name,
            patch=patch[-1],
            latent_channels=int(dm.img_in.proj.weight.shape[1]),
            out_channels=int(dm.final_layer.linear.weight.shape[0]) // math.prod(patch),
            caption_channels=int(dm.txt_in.input_embedder.weight.shape[1]),
            pooled_dim=self.pooled_dim(),
            extra={"guidance": int(bool(p.guidance_embed))},
        )
