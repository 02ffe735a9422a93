"""ECAD on diffusers: ``apply`` / ``cached`` on a pipeline or transformer, the ``generate`` drivers of the search
and evaluation, pipeline loading, built-in tiny pipelines, and which modules of a diffusers DiT are units
(``adapters``). Imports diffusers only where a pipeline is built or loaded."""

from .api import EcadHandle, StepTracker, apply, cached

__all__ = ["EcadHandle", "StepTracker", "apply", "cached"]
