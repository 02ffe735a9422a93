"""The toy family's diffusers adapter (would be ecad_core/diffusers/adapters/toy.py): units at their modules."""

from __future__ import annotations

from .base import BlockGroupSpec, DiffusersAdapter


class ToyDiffusers(DiffusersAdapter):
    family = "toy"
    supports = "ToyTransformer (Toy)"
    groups = (BlockGroupSpec("layers", "toy", (("mix", "mix"), ("mlp", "mlp"))),)

    @classmethod
    def matches(cls, transformer):
        return type(transformer).__name__ == "ToyTransformer"

    def variant_of(self, pipe):
        return "toy-small"
