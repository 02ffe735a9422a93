"""Z-Image and Lumina-Image 2.0 on ComfyUI (``comfy.ldm.lumina.model.NextDiT``): units ``attn`` (the block's
``attention`` module) and ``ffn`` (its ``feed_forward``) of every main layer, cached at those modules.

``JointTransformerBlock.forward`` calls ``attention`` and ``feed_forward`` and applies their outputs through
``attention_norm2`` / ``ffn_norm2``, the tanh gate and the residual add, so a module's output is the unit's raw
output (before gate and residual) and ComfyUI's own block runs around it: no block re-statement, so nothing to
check against ComfyUI's block when it changes (0.33 added fp16 clamps and Z-Image omni's split gates, both
outside these modules). A reused unit's input (its RMSNorm + modulation) is still computed: two cheap
elementwise kernels beside the attention or SwiGLU saved. The refiner blocks in front always run.
"""

from __future__ import annotations

import logging

from ...ecad_core.costs import Arch
from .base import ComfyAdapter, HookPath, Unit, comfy_version

log = logging.getLogger("ecad")
# (layout component, ComfyUI submodule of the block)
UNITS = (("attn", "attention"), ("ffn", "feed_forward"))


class Lumina2Comfy(ComfyAdapter):
    family = "lumina2"
    supports = "Z-Image / Lumina-Image 2.0"
    order = 45
    classes = ("comfy.ldm.lumina.model.NextDiT",)
    units_timeable = True

    @classmethod
    def matches(cls, diffusion_model):
        return super().matches(diffusion_model) and hasattr(diffusion_model, "layers")

    def counts(self):
        return (len(self.dm.layers),)

    @property
    def arch_hint(self):
        # ComfyUI builds Z-Image with time_scale 1000 (and its 256-wide adaLN), Lumina 2 with 1
        return "z-image" if float(getattr(self.dm, "time_scale", 1.0)) != 1.0 else "lumina-image-2"

    @property
    def kind(self):
        return f"ComfyUI NextDiT ({self.arch_hint}, {len(self.dm.layers)} layers)"

    def units(self):
        return [
            Unit(f"layers.{i}", comp, f"layers.{i}.{attr}") for i in range(len(self.dm.layers)) for comp, attr in UNITS
        ]

    def arch(self, name):
        dm = self.dm
        blk = dm.layers[0]
        dim = int(dm.dim)
        mod = blk.adaLN_modulation[-1].weight.shape[1]  # the adaLN linear's input: the timestep embedding
        return Arch.custom(
            "lumina2",
            name=name,
            hidden=dim,
            heads=int(dm.n_heads),
            depth=len(dm.layers),
            mlp_ratio=int(blk.feed_forward.w1.weight.shape[0]) / dim,
            patch=int(dm.patch_size),
            latent_channels=int(dm.in_channels),
            out_channels=int(dm.out_channels),
            caption_channels=int(dm.cap_embedder[-1].weight.shape[1]),
            extra={
                "kv_heads": int(blk.attention.n_kv_heads),
                "ffn_dim": int(blk.feed_forward.w1.weight.shape[0]),
                "refiner_layers": len(dm.noise_refiner),
                "mod_dim": int(mod),
                "t_hidden": int(dm.t_embedder.mlp[0].weight.shape[0]),
                "pad_tokens_multiple": int(getattr(dm, "pad_tokens_multiple", None) or 0),
            },
        )

    def install(self, mp, run):
        n = self.install_modules(mp, run)
        run.hook_path = HookPath("Z-Image/Lumina2", "module caching", restated=False)

        def check_units_ran():
            # every unit runs at step 0; fewer means the blocks no longer call these modules: run uncached (step 0
            # computed everything, so the image is ComfyUI's own)
            ran = int(run.engine.stats.computed[0])
            if ran < n and run.engine.enabled:
                run.engine.enabled = False
                log.warning(
                    "ECAD: Z-Image/Lumina2 on ComfyUI %s: no cache (its layers did not call their attention/"
                    "feed_forward modules as expected: %d of %d units ran)",
                    comfy_version(),
                    ran,
                    n,
                )

        run.first_eval_checks.append(check_units_ran)
