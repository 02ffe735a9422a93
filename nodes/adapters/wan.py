"""Wan 2.1 / 2.2 on ComfyUI (``comfy.ldm.wan.model.WanModel``): units ``self_attn``, ``cross_attn`` and ``ffn`` of
every block, each cached at its module (``install_modules``: an object patch of the module's ``forward``).

``WanAttentionBlock.forward`` calls ``self_attn``, ``cross_attn`` and ``ffn`` and applies the gates (``e[2]``,
``e[5]``) and the residual adds outside them, so a module's output is the unit's raw output, as ECAD caches it:
a reused unit gets this step's gate. The tokens are every latent frame's patches, so a cached output holds the
temporal tokens. Wan 2.2 A14B's two experts are two models (two loaders, an Apply each, two KSamplerAdvanced
stages): each is its own adapter with its own schedule, and the trajectory rule (``nodes/comfy_run.py``) places
each stage on its rows. No block re-statement: what a reused unit skips (its norm + modulation) is a small part of
a Wan block, and module caching survives ComfyUI's changes to the block.
"""

from __future__ import annotations

import logging

from ...ecad_core.costs import Arch
from .base import ComfyAdapter, HookPath, Unit, comfy_version

log = logging.getLogger("ecad")
UNITS = ("self_attn", "cross_attn", "ffn")  # the layout's components = ComfyUI's submodule names
# (dim, layers, out channels) -> variant
VARIANTS = {
    (1536, 30, 16): "wan2.1-t2v-1.3b",
    (5120, 40, 16): "wan2.1-t2v-14b",
    (3072, 30, 48): "wan2.2-ti2v-5b",
}


class WanComfy(ComfyAdapter):
    family = "wan"
    supports = "Wan 2.1/2.2"
    order = 40
    classes = ("comfy.ldm.wan.model.WanModel",)
    units_timeable = True

    @classmethod
    def matches(cls, diffusion_model):
        # a Wan whose blocks call these three modules (VACE, camera, S2V, HuMo, Animate blocks do too: their extra
        # branches run uncached); anything else is left to block-level caching
        if not super().matches(diffusion_model):
            return False
        blocks = getattr(diffusion_model, "blocks", None)
        try:
            return len(blocks) > 0 and all(all(hasattr(b, u) for u in UNITS) for b in blocks)
        except TypeError:
            return False

    def counts(self):
        return (len(self.dm.blocks),)

    @property
    def arch_hint(self):
        dm = self.dm
        return VARIANTS.get((int(dm.dim), len(dm.blocks), int(dm.out_dim)))

    @property
    def kind(self):
        hint = self.arch_hint
        return f"ComfyUI Wan ({hint + ', ' if hint else ''}{len(self.dm.blocks)} blocks)"

    def units(self):
        return [Unit(f"blocks.{i}", u, f"blocks.{i}.{u}") for i in range(len(self.dm.blocks)) for u in UNITS]

    def arch(self, name):
        dm = self.dm
        dim = int(dm.dim)
        extra = {"clip_tokens": 257} if getattr(dm, "img_emb", None) is not None else {}
        return Arch.custom(
            "wan",
            name=name,
            hidden=dim,
            heads=int(dm.num_heads),
            depth=len(dm.blocks),
            mlp_ratio=int(dm.ffn_dim) / dim,
            patch=int(dm.patch_size[-1]),
            latent_channels=int(dm.in_dim),
            out_channels=int(dm.out_dim),
            caption_channels=int(dm.text_dim),
            time_proj_dim=int(dm.freq_dim),
            vae_scale=16 if int(dm.out_dim) == 48 else 8,  # Wan 2.2's 48-channel VAE: 16 pixels per latent pixel
            extra=extra,
        )

    def install(self, mp, run):
        n = self.install_modules(mp, run)
        run.hook_path = HookPath("Wan", "module caching", restated=False)

        def check_units_ran():
            # every unit runs at step 0; fewer: the blocks no longer call these modules, so run uncached (step 0
            # computed everything, so this image is ComfyUI's own)
            ran = int(run.engine.stats.computed[0])
            if ran < n and run.engine.enabled:
                run.engine.enabled = False
                log.warning(
                    "ECAD: Wan on ComfyUI %s: no cache (its blocks did not call their self_attn/cross_attn/ffn "
                    "modules as expected: %d of %d units ran)",
                    comfy_version(),
                    ran,
                    n,
                )

        run.first_eval_checks.append(check_units_ran)
