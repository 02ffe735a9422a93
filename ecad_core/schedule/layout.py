"""Which units a schedule addresses: block groups and their components.

A layout is an ordered list of block groups. Each group names its blocks
``f"{prefix}{i}"`` for ``i < count`` and lists the components every block in
the group has. The flat unit order is group by group, block by block,
component by component — the same order ECAD's GA flattens schedules in, so
bit ``3*block + component`` of a PixArt step is ECAD's bit too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .. import families

# family name -> its (prefix, components) groups, as ``ecad_core.families`` declares them
FAMILIES: Mapping[str, tuple[tuple[str, tuple[str, ...]], ...]] = families.LiveView(
    lambda: {f.name: f.groups for f in families.registered()}
)


@dataclass(frozen=True)
class BlockGroup:
    prefix: str
    count: int
    components: tuple[str, ...]

    def block_names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "count": self.count, "components": list(self.components)}


@dataclass(frozen=True)
class Layout:
    family: str
    groups: tuple[BlockGroup, ...]

    @property
    def n_units(self) -> int:
        return sum(g.count * len(g.components) for g in self.groups)

    @property
    def n_blocks(self) -> int:
        return sum(g.count for g in self.groups)

    def units(self) -> list[tuple[str, str]]:
        return list(self.iter_units())

    def iter_units(self) -> Iterator[tuple[str, str]]:
        for g in self.groups:
            for b in g.block_names():
                for c in g.components:
                    yield b, c

    def unit_index(self) -> dict[tuple[str, str], int]:
        return {u: i for i, u in enumerate(self.iter_units())}

    def block_slices(self) -> list[tuple[str, slice]]:
        """(block name, slice of its units in the flat order) for every block."""
        out, start = [], 0
        for g in self.groups:
            n = len(g.components)
            for b in g.block_names():
                out.append((b, slice(start, start + n)))
                start += n
        return out

    def block_counts(self) -> dict[str, int]:
        """{group name: block count}, the group names of the family ("blocks", "single_blocks", ...)."""
        fam = families.get(self.family)
        names = dict(zip((p for p, _ in fam.groups), fam.group_names))
        return {names[g.prefix]: g.count for g in self.groups}

    def describe(self) -> str:
        parts = [
            f"{g.count} {(g.prefix.rstrip('_') or 'main')} blocks x {'/'.join(g.components)}"
            for g in self.groups
            if g.count
        ]
        return f"{self.family}: " + ", ".join(parts)

    def to_json(self) -> list[dict]:
        return [g.to_json() for g in self.groups]


def make_layout(family: str, *counts: int) -> Layout:
    """Layout of a known family: ``make_layout("pixart", 28)``, ``make_layout("flux", 19, 38)``."""
    spec = families.get(family).groups
    if not 1 <= len(counts) <= len(spec):
        raise ValueError(f"family {family!r} takes {len(spec)} block count(s), got {len(counts)}")
    counts = tuple(counts) + (0,) * (len(spec) - len(counts))
    groups = tuple(BlockGroup(p, int(n), comps) for (p, comps), n in zip(spec, counts))
    for g in groups:
        if g.count < 0:
            raise ValueError(f"negative block count {g.count} for {family!r}")
    return Layout(family, groups)


def layout_from_json(family: str, groups: list) -> Layout:
    """Rebuild a layout stored in a schedule file; checks it against the family (ValueError if wrong)."""
    order = [p for p, _ in families.get(family).groups]
    if not isinstance(groups, list) or not groups:
        raise ValueError("'layout' must be a non-empty list of block groups")
    spec = dict(families.get(family).groups)
    out = []
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or set(g) != {"prefix", "count", "components"}:
            raise ValueError(f"layout group {i} must have exactly the keys prefix, count, components")
        prefix, count, comps = g["prefix"], g["count"], g["components"]
        if not isinstance(prefix, str) or prefix not in spec:  # a list/dict is unhashable: check type first
            raise ValueError(f"layout group {i}: block prefix {prefix!r} is not part of family {family!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0 or count > 4096:
            raise ValueError(f"layout group {i}: count must be an integer in 0..4096, got {count!r}")
        if not isinstance(comps, list) or comps != list(spec[prefix]):
            raise ValueError(
                f"layout group {i}: components must be {list(spec[prefix])} for family {family!r}, got {comps!r}"
            )
        out.append(BlockGroup(prefix, count, tuple(comps)))
    if len({g.prefix for g in out}) != len(out):
        raise ValueError("layout lists the same block prefix twice")
    if [g.prefix for g in out] != [p for p in order if p in {g.prefix for g in out}]:
        raise ValueError(f"layout groups of {family!r} must come in the order {order}")
    return Layout(family, tuple(out))
