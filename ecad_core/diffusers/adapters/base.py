"""``DiffusersAdapter``: which modules of one family's diffusers transformer are ECAD's units.

An adapter lists the transformer's block groups (``BlockGroupSpec``: the attribute holding the blocks, each unit's
component and submodule, and optionally the ``BlockHook`` re-statement that serves a whole block); everything
else (the layout, the unit modules in the layout's flat order, the refusal of a block that lacks a unit's module)
is done here, once for every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ... import families
from ...errors import ModelMismatchError
from ...hooks.base import BlockHook
from ...schedule.layout import Layout, make_layout


@dataclass(frozen=True)
class BlockGroupSpec:
    """One block group of a transformer: ``transformer.<attr>[i]`` are its blocks."""

    attr: str
    kind: str  # block kind, for messages: "pixart", "flux_double"
    units: tuple[tuple[str, str], ...]  # (component, submodule of the block), in the family's component order
    hook: type[BlockHook] | None = None  # serves all units of a block at once (a block re-statement)


@dataclass
class BlockUnits:
    """A block whose units a block re-statement (``hook``) can serve."""

    kind: str  # "pixart", "flux_double", "flux_single"
    module: torch.nn.Module
    first_unit: int  # its units are first_unit .. first_unit + n - 1 in the layout's flat order
    name: str
    hook: type[BlockHook] | None = None
    n_units: int = 3


@dataclass
class UnitMap:
    """A model's layout and, in the layout's flat order, the module of each unit."""

    layout: Layout
    modules: list[torch.nn.Module]
    names: list[str]  # dotted module paths, for messages
    model_kind: str  # e.g. "diffusers PixArtTransformer2DModel"
    blocks: list[BlockUnits] = field(default_factory=list)


class DiffusersAdapter:
    """One family's diffusers transformers. Subclass it in a module of ``ecad_core/diffusers/adapters``."""

    family: ClassVar[str]  # the ``ecad_core.families`` record
    supports: ClassVar[str]  # for the refusal of other models: "PixArtTransformer2DModel (PixArt-α/Σ)"
    order: ClassVar[int] = 50  # matching order
    groups: ClassVar[tuple[BlockGroupSpec, ...]]

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer

    @classmethod
    def matches(cls, transformer: torch.nn.Module) -> bool:
        raise NotImplementedError

    def units(self) -> UnitMap:
        tr = self.transformer
        counts: list[int] = []
        mods: list[torch.nn.Module] = []
        names: list[str] = []
        blocks: list[BlockUnits] = []
        for g in self.groups:
            group = getattr(tr, g.attr)
            counts.append(len(group))
            for i, blk in enumerate(group):
                blocks.append(BlockUnits(g.kind, blk, len(mods), f"{g.attr}.{i}", g.hook, len(g.units)))
                for _comp, sub in g.units:
                    m = getattr(blk, sub, None)
                    if not isinstance(m, torch.nn.Module):
                        label = families.get(self.family).label
                        raise ModelMismatchError(f"{g.attr}.{i} has no {sub!r}: not a {label} block")
                    mods.append(m)
                    names.append(f"{g.attr}.{i}.{sub}")
        return UnitMap(make_layout(self.family, *counts), mods, names, f"diffusers {type(tr).__name__}", blocks)

    def variant_of(self, pipe: Any) -> str | None:
        """The schedule model hint of a pipeline around this transformer (None: unknown)."""
        return None

    def text_tokens(self, pipe: Any, extra: dict | None = None) -> int | None:
        """The prompt length the pipeline pads to, for the cost model (``extra``: the call's pipeline
        arguments; None: the architecture's default)."""
        return None
