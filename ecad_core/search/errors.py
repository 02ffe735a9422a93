"""Errors of the schedule search; all are ``EcadError`` (and ``ValueError`` for bad input)."""
from __future__ import annotations

from ..errors import EcadError


class SearchSettingsError(EcadError, ValueError):
    """A search setting (population, generations, prompts, warm start, ...) is invalid."""


class CheckpointError(EcadError, ValueError):
    """A checkpoint in the output folder cannot be used (corrupt, other version, other settings)."""


class EvaluationError(EcadError, RuntimeError):
    """An evaluator broke its contract (wrong number of losses, wrong output count, ...)."""
