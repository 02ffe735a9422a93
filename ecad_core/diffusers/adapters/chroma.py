"""Chroma on diffusers (``ChromaTransformer2DModel``): FLUX.1's units at the same modules, family ``chroma``. Its
blocks take their modulation from the distilled guidance layer (pruned adaLN norms without a linear), so FLUX's
block re-statements do not cover them: every unit is hooked at its module (with a log line)."""

from __future__ import annotations

from .flux import FluxDiffusers


class ChromaDiffusers(FluxDiffusers):
    family = "chroma"
    supports = "ChromaTransformer2DModel (Chroma)"
    order = 9  # before FLUX.1's adapter, which would take its block attributes

    @classmethod
    def matches(cls, transformer):
        return type(transformer).__name__.startswith("Chroma") and super().matches(transformer)

    def variant_of(self, pipe):
        return "chroma" if type(pipe).__name__.startswith("Chroma") else None

    def text_tokens(self, pipe, extra=None):
        if type(pipe).__name__.startswith("Chroma") and extra:
            return extra.get("max_sequence_length")
        return None
