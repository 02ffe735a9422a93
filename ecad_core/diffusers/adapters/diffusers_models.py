"""Units of diffusers' DiTs (no diffusers import needed: found by structure)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import ModelMismatchError
from ...schedule.layout import Layout, make_layout


@dataclass
class BlockUnits:
    """A block whose three units a block re-statement can serve (``hooks.BLOCK_HOOKS[kind]``)."""

    kind: str  # "pixart", "flux_double", "flux_single"
    module: torch.nn.Module
    first_unit: int  # its units are first_unit .. first_unit + 2 in the layout's flat order
    name: str


@dataclass
class UnitMap:
    """A model's layout and, in the layout's flat order, the module of each unit."""

    layout: Layout
    modules: list[torch.nn.Module]
    names: list[str]  # dotted module paths, for messages
    model_kind: str  # e.g. "diffusers PixArtTransformer2DModel"
    blocks: list[BlockUnits] = field(default_factory=list)


def _pixart_units(tr) -> UnitMap:
    blocks = tr.transformer_blocks
    layout = make_layout("pixart", len(blocks))
    mods, names = [], []
    for i, blk in enumerate(blocks):
        for comp in ("attn1", "attn2", "ff"):
            m = getattr(blk, comp, None)
            if m is None:
                raise ModelMismatchError(f"transformer_blocks.{i} has no {comp!r}: not a PixArt block")
            mods.append(m)
            names.append(f"transformer_blocks.{i}.{comp}")
    return UnitMap(
        layout,
        mods,
        names,
        f"diffusers {type(tr).__name__}",
        blocks=[BlockUnits("pixart", b, 3 * i, f"transformer_blocks.{i}") for i, b in enumerate(blocks)],
    )


def _flux_units(tr) -> UnitMap:
    double, single = tr.transformer_blocks, tr.single_transformer_blocks
    layout = make_layout("flux", len(double), len(single))
    mods, names = [], []
    for i, blk in enumerate(double):
        for _comp, attr in (("full_attn", "attn"), ("full_ff", "ff"), ("full_ff_context", "ff_context")):
            mods.append(getattr(blk, attr))
            names.append(f"transformer_blocks.{i}.{attr}")
    for i, blk in enumerate(single):
        for _comp, attr in (("single_attn", "attn"), ("single_proj_mlp", "proj_mlp"), ("single_proj_out", "proj_out")):
            mods.append(getattr(blk, attr))
            names.append(f"single_transformer_blocks.{i}.{attr}")
    nd = len(double)
    blocks = [BlockUnits("flux_double", b, 3 * i, f"transformer_blocks.{i}") for i, b in enumerate(double)] + [
        BlockUnits("flux_single", b, 3 * (nd + j), f"single_transformer_blocks.{j}") for j, b in enumerate(single)
    ]
    return UnitMap(layout, mods, names, f"diffusers {type(tr).__name__}", blocks=blocks)


def find_diffusers_units(transformer: torch.nn.Module) -> UnitMap:
    """Units of a diffusers PixArt (α/Σ) or FLUX transformer; a clear error for anything else."""
    cls = type(transformer).__name__
    if hasattr(transformer, "single_transformer_blocks") and hasattr(transformer, "transformer_blocks"):
        return _flux_units(transformer)
    cfg = getattr(transformer, "config", None)
    norm_type = getattr(cfg, "norm_type", None) if cfg is not None else None
    if hasattr(transformer, "transformer_blocks") and (
        cls == "PixArtTransformer2DModel" or norm_type == "ada_norm_single"
    ):
        return _pixart_units(transformer)
    raise ModelMismatchError(
        f"ECAD has no diffusers adapter for {cls}: supported are PixArtTransformer2DModel "
        f"(PixArt-α/Σ) and FluxTransformer2DModel (FLUX.1)"
    )
