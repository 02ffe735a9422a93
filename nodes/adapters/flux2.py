"""FLUX.2 on ComfyUI: ComfyUI loads it as its FLUX.1 class (``comfy.ldm.flux.model.Flux`` with
``global_modulation``: one modulation per stream for all blocks, SiLU-gated MLPs, no biases, patch size 1).

The blocks are FLUX's own classes, so FLUX's units, re-statements (which read the shared modulations a block is
handed when it has none of its own) and module-level fallback serve it unchanged; what differs is the family (its
own layout: FLUX.1 schedules are refused), the cost model and the prompt length (ComfyUI pads FLUX.2's text to 512
tokens)."""

from __future__ import annotations

from ...ecad_core import families
from .flux import FluxComfy

FLUX2_TEXT_TOKENS = 512  # comfy.model_base.Flux2.extra_conds pads shorter prompts to this


def is_flux2(dm) -> bool:
    return bool(getattr(getattr(dm, "params", None), "global_modulation", False))


class Flux2Comfy(FluxComfy):
    family = "flux2"
    supports = "FLUX.2"
    order = 18
    kind_label = "FLUX.2"
    classes = ("comfy.ldm.flux.model.Flux",)

    @classmethod
    def matches(cls, diffusion_model):
        # FluxComfy's class test without its refusal of FLUX.2
        return (
            super(FluxComfy, cls).matches(diffusion_model)
            and hasattr(diffusion_model, "double_blocks")
            and hasattr(diffusion_model, "single_blocks")
            and is_flux2(diffusion_model)
        )

    @property
    def arch_hint(self):
        # the published variant of this width and depth, else dev (guidance) / klein (distilled) as costed
        fam = families.get("flux2")
        nd, ns = self.counts()
        for v in fam.variants:
            if (v.arch["hidden"], v.arch["depth"], v.arch["single_depth"]) == (int(self.dm.hidden_size), nd, ns):
                return v.name
        return "flux2-dev" if getattr(self.dm.params, "guidance_embed", False) else "flux2-klein-4b"

    def arch(self, name):
        p = self.dm.params
        if int(p.patch_size) != 1 or not getattr(p, "mlp_silu_act", False):
            return None
        return self.custom_arch(
            name,
            latent_channels=int(p.in_channels),
            out_channels=int(p.out_channels),
            guidance_embeds=bool(getattr(p, "guidance_embed", False)),
        )

    def compute_cost(self, steps, height, width, text_tokens):
        return super().compute_cost(steps, height, width, max(text_tokens or 0, FLUX2_TEXT_TOKENS))
