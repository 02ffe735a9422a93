"""Model adapters: which modules of a model are ECAD's units."""

from .diffusers_models import UnitMap, find_diffusers_units

__all__ = ["UnitMap", "find_diffusers_units"]
