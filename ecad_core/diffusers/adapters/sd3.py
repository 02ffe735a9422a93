"""SD3 / SD3.5 on diffusers (``SD3Transformer2DModel``): ``transformer_blocks[:-1]`` have the units ``attn`` (the
joint attention, returning both streams' outputs), ``ff`` and ``ff_context``; the last block (context pre-only:
no text MLP) ``attn`` and ``ff`` (group ``last_``). All hooked at their modules (raw outputs). SD3.5 Medium's dual
attention (a separate ``attn2`` module, part of the ``attn`` unit on ComfyUI) is refused here."""

from __future__ import annotations

import torch

from ...errors import ModelMismatchError
from ...schedule.layout import make_layout
from .base import BlockUnits, DiffusersAdapter, UnitMap

MAIN = (("attn", "attn"), ("ff", "ff"), ("ff_context", "ff_context"))
LAST = (("attn", "attn"), ("ff", "ff"))


class SD3Diffusers(DiffusersAdapter):
    family = "sd3"
    supports = "SD3Transformer2DModel (SD3, SD3.5 Large)"
    order = 16
    groups = ()

    @classmethod
    def matches(cls, transformer):
        return type(transformer).__name__ == "SD3Transformer2DModel"

    def units(self) -> UnitMap:
        blocks = list(getattr(self.transformer, "transformer_blocks", None) or [])
        if len(blocks) < 2:
            raise ModelMismatchError("SD3: the transformer has fewer than 2 joint blocks")
        mods: list[torch.nn.Module] = []
        names: list[str] = []
        served: list[BlockUnits] = []
        for i, blk in enumerate(blocks):
            if getattr(blk, "attn2", None) is not None:
                raise ModelMismatchError(
                    f"transformer_blocks.{i} has a dual attention (SD3.5 Medium): not supported on diffusers "
                    "(ComfyUI's MMDiT is)"
                )
            last = i == len(blocks) - 1
            subs = LAST if last else MAIN
            served.append(BlockUnits("sd3", blk, len(mods), f"transformer_blocks.{i}", None, len(subs)))
            for _comp, sub in subs:
                m = getattr(blk, sub, None)
                if not isinstance(m, torch.nn.Module):
                    raise ModelMismatchError(f"transformer_blocks.{i} has no {sub!r}: not an SD3 block")
                mods.append(m)
                names.append(f"transformer_blocks.{i}.{sub}")
        layout = make_layout(self.family, len(blocks) - 1, 1)
        return UnitMap(layout, mods, names, f"diffusers {type(self.transformer).__name__}", served)

    def variant_of(self, pipe):
        if not type(pipe).__name__.startswith("StableDiffusion3"):
            return None
        return "sd3.5-large" if len(self.transformer.transformer_blocks) == 38 else "sd3-medium"
