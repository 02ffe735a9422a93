"""Chroma on ComfyUI (``comfy.ldm.chroma.model.Chroma``, not Chroma Radiance): FLUX.1's double and single blocks
built without their own modulation; each block is handed its shift / scale / gate from the distilled guidance
layer. FLUX's units, re-statements (which use the handed modulations when a block has none) and module-level
fallback serve it; its own layout and cost model (the approximator instead of per-block modulation linears)."""

from __future__ import annotations

from ...ecad_core.families.chroma import APPROXIMATOR
from .flux import FluxComfy


class ChromaComfy(FluxComfy):
    family = "chroma"
    supports = "Chroma"
    order = 19
    kind_label = "Chroma"
    kind_names_variant = False
    classes = ("comfy.ldm.chroma.model.Chroma",)
    # pixel-space Chroma: another input and output path around the blocks; block-level (dit_blocks) serves it
    excludes = ("comfy.ldm.chroma_radiance.model.ChromaRadiance",)

    @property
    def arch_hint(self):
        return "chroma"

    def arch(self, name):
        dm = self.dm
        p = dm.params
        if int(p.patch_size) != 2:
            return None
        ap = dm.distilled_guidance_layer
        pack = int(p.patch_size) ** 2
        return self.custom_arch(
            name,
            latent_channels=int(dm.img_in.weight.shape[1]) // pack,
            out_channels=int(dm.final_layer.linear.weight.shape[0]) // pack,
            extra=dict(
                approximator_in=int(ap.in_proj.weight.shape[1]),
                approximator_hidden=int(ap.in_proj.weight.shape[0]),
                approximator_layers=len(ap.layers),
                mod_vectors=APPROXIMATOR["mod_vectors"],  # ComfyUI's forward hard-codes it
            ),
        )
