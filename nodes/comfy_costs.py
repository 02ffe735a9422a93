"""The compute objective for a ComfyUI model: analytic MACs when ``ecad_core.costs`` knows the architecture.

The numbers come from the loaded ComfyUI module (widths, depths, channels), so
a fine-tune or a pruned variant is costed as it is; an architecture the cost
model does not cover (SD3, Wan, ...) falls back to "every unit costs the same".
"""

from __future__ import annotations

import logging

from ..ecad_core.costs import Arch, ComputeCost, macs_cost, uniform_cost
from ..ecad_core.schedule import Layout

log = logging.getLogger("ecad")


def _in_features(linear) -> int:
    return int(linear.weight.shape[1])


def arch_of(dm, name: str) -> Arch | None:
    """An ``Arch`` for a ComfyUI PixArt or FLUX diffusion model; None for other models."""
    cls = {c.__name__ for c in type(dm).__mro__}
    if "PixArtMS" in cls or "PixArt" in cls:
        blk = dm.blocks[0]
        hidden = int(dm.hidden_size)
        return Arch.pixart(
            name=name,
            hidden=hidden,
            heads=int(dm.num_heads),
            depth=len(dm.blocks),
            mlp_ratio=int(blk.mlp.fc1.weight.shape[0]) / hidden,
            patch=int(dm.patch_size),
            latent_channels=int(dm.in_channels),
            out_channels=int(dm.out_channels),
            caption_channels=_in_features(dm.y_embedder.y_proj.fc1),
            micro_conditioning=bool(getattr(dm, "micro_conditioning", False)),
        )
    if "Flux" in cls and "Chroma" not in cls and hasattr(dm, "double_blocks"):
        p = dm.params
        if int(p.patch_size) != 2:
            return None
        vec = getattr(dm, "vector_in", None)
        return Arch.flux(
            name=name,
            hidden=int(dm.hidden_size),
            heads=int(dm.num_heads),
            depth=len(dm.double_blocks),
            single_depth=len(dm.single_blocks),
            mlp_ratio=float(p.mlp_ratio),
            latent_channels=int(p.in_channels),
            out_channels=int(p.out_channels),
            caption_channels=_in_features(dm.txt_in),
            pooled_dim=_in_features(vec.in_layer) if vec is not None else 0,
            guidance_embeds=bool(getattr(p, "guidance_embed", False)),
        )
    return None


def cost_for_comfy_model(
    model_patcher,
    layout: Layout,
    steps: int,
    height: int,
    width: int,
    text_tokens: int | None,
    name: str = "comfy-model",
) -> ComputeCost:
    dm = model_patcher.model.diffusion_model
    why = None
    try:
        arch = arch_of(dm, name)
        if arch is not None:
            return macs_cost(layout, steps, arch, height, width, text_tokens=text_tokens)
        why = f"no analytic cost model for {type(dm).__name__}"
    except (AttributeError, TypeError, ValueError, IndexError) as e:
        why = f"cannot read the architecture of {type(dm).__name__} ({e})"
    log.info("ECAD search: %s; every unit costs the same", why)
    c = uniform_cost(layout, steps)
    return ComputeCost(c.unit, c.fixed, source="uniform", info={"why": why})
