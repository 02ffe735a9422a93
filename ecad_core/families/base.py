"""``Family``: everything host-independent about one model family, in one record.

A family names the units of its schedules (block groups and their components), its variants (the schedules'
model hints, with the numbers of the analytic cost model), how its MACs are counted, how its weights are
recognised from tensor names, whether ECAD's reference format covers it and how the preview draws it. The
hosts' adapters (``ecad_core/diffusers/adapters/<family>.py``, ``nodes/adapters/<family>.py``) say which
modules of a loaded model are those units.

No torch, and nothing of ``ecad_core`` but the registry helper: the schedule files (``ecad info``) read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

RGB = tuple[float, float, float]
DEFAULT_COLOR: RGB = (0.9, 0.9, 0.9)


@dataclass(frozen=True)
class Variant:
    """A model of the family that schedules name (``Schedule.model``): e.g. ``pixart-sigma``."""

    name: str
    label: str  # shown in the schedule library's dropdown and the Load node's info: "PixArt-Σ"
    arch: Mapping[str, Any] = field(default_factory=dict)  # ``costs.Arch`` numbers (empty: no cost model)


class Family:
    """One model family. Subclass it in a module of ``ecad_core/families``; the registry finds it."""

    name: ClassVar[str]  # the layout family written in schedule files: "pixart"
    label: ClassVar[str]  # for messages: "PixArt"
    order: ClassVar[int] = 50  # listing and detection order
    # (block name prefix, components) of each block group, in the flat unit order
    groups: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]]
    group_names: ClassVar[tuple[str, ...]]  # each group's name in schedule summaries: "blocks", "single_blocks"
    variants: ClassVar[tuple[Variant, ...]] = ()
    default_variant: ClassVar[str | None] = None  # costed with when a schedule names no known variant
    custom_arch: ClassVar[Mapping[str, Any]] = {}  # defaults of a custom architecture over the default variant
    ecad_format: ClassVar[bool] = False  # ECAD's reference schedule format covers it
    colors: ClassVar[Mapping[str, RGB]] = {}  # component -> colour of a recomputed cell in the preview
    # search seeds: (cross-attention-like, self-attention-like) components of TGATE-like seeds (None: none),
    # and the attention components recomputed together
    tgate_components: ClassVar[tuple[str, str] | None] = None
    attention_components: ClassVar[tuple[str, ...]] = ()

    # -- units ------------------------------------------------------------------------------------------
    def components(self) -> set[str]:
        return {c for _, comps in self.groups for c in comps}

    def color(self, component: str) -> RGB:
        return self.colors.get(component, DEFAULT_COLOR)

    # -- weights ----------------------------------------------------------------------------------------
    def detect(self, keys: list[str], key_set: set[str]) -> tuple[tuple[int, ...], str] | None:
        """(block count of each group, model word) when these tensor names (container prefix stripped) are
        this family's weights, as the Apply node would patch them; None otherwise."""
        return None

    # -- ECAD's reference format ------------------------------------------------------------------------
    def variant_of_ecad_config(self, config: Mapping[str, Any]) -> str | None:
        """The model hint of a reference-format schedule from its ``config`` object (None: unknown)."""
        return None

    # -- cost model -------------------------------------------------------------------------------------
    @property
    def has_cost_model(self) -> bool:
        return any(v.arch for v in self.variants)

    def arch_counts(self, arch) -> tuple[int, ...]:
        """The block count of each group of an ``Arch``'s layout."""
        return (arch.depth, arch.single_depth)[: len(self.groups)]

    def check_arch(self, arch) -> str | None:
        """What is wrong with an ``Arch`` of this family (None: nothing)."""
        if len(self.groups) == 1 and arch.single_depth:
            return f"{self.label} has no single-stream blocks"
        return None

    def arch_from_diffusers_config(
        self, config: Mapping[str, Any], name: str | None, text_tokens: int | None
    ) -> dict[str, Any] | None:
        """``costs.Arch`` fields from a diffusers transformer config of this family (None: not this family's
        config; ValueError: this family's, in a configuration the cost model does not cover)."""
        return None

    def step_macs(
        self, arch, n_image: int, n_text: int, attention: bool, height: int, width: int
    ) -> tuple[list[list[int]], dict[str, int]]:
        """MACs of one denoiser call on one sample: each group's per-block unit costs (component order) and
        the fixed parts that run at every step. ``attention``: count the QK^T and AV products too."""
        raise ValueError(f"no cost model for family {self.name!r}")

    def __repr__(self) -> str:
        return f"<family {self.name}>"


def timestep_embedding_macs(arch) -> int:
    """Sinusoid -> linear -> SiLU -> linear, as every DiT here embeds its timestep."""
    return arch.time_proj_dim * arch.hidden + arch.hidden * arch.hidden


def count_blocks(keys: list[str], prefix: str) -> int:
    """1 + the largest ``N`` of the tensor names ``<prefix>N.…`` (0: none)."""
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(idx) + 1 if idx else 0
