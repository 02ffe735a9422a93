"""The toy family's ComfyUI adapter (would be nodes/adapters/toy.py): the model class by dotted path, the units
with their modules; no ``install``: the generic module-level installer caches it."""

from __future__ import annotations

from ...ecad_core.costs import Arch
from .base import ComfyAdapter, Unit


class ToyComfy(ComfyAdapter):
    family = "toy"
    supports = "Toy"
    order = 80
    classes = ("support.toy_family.model.ToyTransformer",)
    units_timeable = True

    def counts(self):
        return (len(self.dm.layers),)

    @property
    def arch_hint(self):
        return "toy-small"

    def units(self):
        return [
            Unit(f"layers.{i}", comp, f"layers.{i}.{comp}")
            for i in range(len(self.dm.layers))
            for comp in ("mix", "mlp")
        ]

    def arch(self, name):
        w = int(self.dm.toy_embed.weight.shape[0])
        return Arch.custom("toy", name=name, hidden=w, depth=len(self.dm.layers), latent_channels=w, out_channels=w)
